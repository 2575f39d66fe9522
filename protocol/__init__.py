"""gridnode's wire protocol, sans-IO: message types, codec, session state machine.

Nothing in this package touches sockets, trio, the clock or the filesystem (a test
enforces it), so everything here can be unit-tested, fuzzed and simulated without a
network.  The I/O lives in ``gridnode.transport``.
"""

from ._codec import DEFAULT_LIMITS as DEFAULT_LIMITS
from ._codec import DEFAULT_MAX_FRAME_BYTES as DEFAULT_MAX_FRAME_BYTES
from ._codec import Limits as Limits
from ._codec import decode as decode
from ._codec import encode as encode
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._identity import check_signature as check_signature
from ._identity import format_node_id as format_node_id
from ._identity import parse_node_id as parse_node_id
from ._identity import receipt_payload as receipt_payload
from ._identity import root_locator as root_locator
from ._identity import short_node_id as short_node_id
from ._identity import sign as sign
from ._identity import verify as verify
from ._messages import MAX_PACKETS_PER_BATCH as MAX_PACKETS_PER_BATCH
from ._messages import MAX_ROOT_BYTES as MAX_ROOT_BYTES
from ._messages import MESSAGE_TYPES as MESSAGE_TYPES
from ._messages import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._messages import ControlCall as ControlCall
from ._messages import ControlEvent as ControlEvent
from ._messages import ControlHello as ControlHello
from ._messages import ControlResult as ControlResult
from ._messages import DeletePacket as DeletePacket
from ._messages import Error as Error
from ._messages import FetchPacket as FetchPacket
from ._messages import GetRoot as GetRoot
from ._messages import Goodbye as Goodbye
from ._messages import Hello as Hello
from ._messages import Message as Message
from ._messages import Offer as Offer
from ._messages import PacketData as PacketData
from ._messages import PacketDeleted as PacketDeleted
from ._messages import PacketPart as PacketPart
from ._messages import PacketsStored as PacketsStored
from ._messages import PacketStored as PacketStored
from ._messages import PartStored as PartStored
from ._messages import Ping as Ping
from ._messages import Pong as Pong
from ._messages import PutRoot as PutRoot
from ._messages import RootData as RootData
from ._messages import RootStored as RootStored
from ._messages import StorePacket as StorePacket
from ._messages import StorePackets as StorePackets
from ._messages import message as message
from ._messages import record as record
from ._session import HANDSHAKE_MAX_FRAME_BYTES as HANDSHAKE_MAX_FRAME_BYTES
from ._session import Event as Event
from ._session import HandshakeComplete as HandshakeComplete
from ._session import MessageReceived as MessageReceived
from ._session import Role as Role
from ._session import Session as Session
from ._session import SessionClosed as SessionClosed
from ._session import SessionState as SessionState

# isort: split
from ._gossip import CLAIM_STATES as CLAIM_STATES
from ._gossip import MAX_PIGGYBACK_UPDATES as MAX_PIGGYBACK_UPDATES
from ._gossip import MAX_RECORDS_PER_MESSAGE as MAX_RECORDS_PER_MESSAGE
from ._gossip import MEMBER_STATES as MEMBER_STATES
from ._gossip import GossipIndirectAck as GossipIndirectAck
from ._gossip import GossipLeave as GossipLeave
from ._gossip import GossipProbe as GossipProbe
from ._gossip import GossipProbeAck as GossipProbeAck
from ._gossip import GossipProbeRequest as GossipProbeRequest
from ._gossip import GossipSync as GossipSync
from ._gossip import GossipSyncReply as GossipSyncReply
from ._gossip import GossipUpdates as GossipUpdates
from ._gossip import MemberRecord as MemberRecord
from ._gossip import MemberUpdate as MemberUpdate
from ._gossip import claim_digest as claim_digest
from ._gossip import claim_is_valid as claim_is_valid
from ._gossip import claim_signing_payload as claim_signing_payload
from ._gossip import encoded_size as encoded_size
from ._gossip import record_digest as record_digest
from ._gossip import record_is_valid as record_is_valid
from ._gossip import record_signing_payload as record_signing_payload
from ._gossip import sign_claim as sign_claim
from ._gossip import sign_record as sign_record
