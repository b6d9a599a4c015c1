from protos.ckd.v1 import wire_pb2 as _wire_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetModelRequest(_message.Message):
    __slots__ = ("requester", "round", "header_only")
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    HEADER_ONLY_FIELD_NUMBER: _ClassVar[int]
    requester: str
    round: int
    header_only: bool
    def __init__(self, requester: _Optional[str] = ..., round: _Optional[int] = ..., header_only: _Optional[bool] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("stored", "duplicate", "examples")
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    stored: bool
    duplicate: bool
    examples: int
    def __init__(self, stored: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., examples: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("peer", "published_round", "taught_round", "batches_stored", "examples_stored")
    PEER_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_ROUND_FIELD_NUMBER: _ClassVar[int]
    TAUGHT_ROUND_FIELD_NUMBER: _ClassVar[int]
    BATCHES_STORED_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_STORED_FIELD_NUMBER: _ClassVar[int]
    peer: str
    published_round: int
    taught_round: int
    batches_stored: int
    examples_stored: int
    def __init__(self, peer: _Optional[str] = ..., published_round: _Optional[int] = ..., taught_round: _Optional[int] = ..., batches_stored: _Optional[int] = ..., examples_stored: _Optional[int] = ...) -> None: ...
