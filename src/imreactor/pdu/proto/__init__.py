"""Protobuf modules of the TeamTalk schema, one per package of proto/*.proto.

Every ``*_pb2.py`` and ``*_pb2.pyi`` here is written by scripts/gen_proto.py; edit the ``.proto``
files and regenerate instead. Look messages up by command id through imreactor.pdu.registry.
"""
