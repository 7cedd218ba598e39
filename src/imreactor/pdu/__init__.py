"""The TeamTalk wire protocol: PDU header and framing, protobuf schema, message registry."""
