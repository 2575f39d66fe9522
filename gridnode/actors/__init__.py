"""The node's actors, one module each: request, sequencer, uploader, packet_store,
retriever, assembler, gossip.  Each reads a bounded channel; ``gridnode.node`` wires them."""
