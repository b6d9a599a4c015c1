from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_READY: _ClassVar[Stage]
    STAGE_PUBLISHED: _ClassVar[Stage]
    STAGE_TAUGHT: _ClassVar[Stage]
    STAGE_DONE: _ClassVar[Stage]
STAGE_UNSPECIFIED: Stage
STAGE_READY: Stage
STAGE_PUBLISHED: Stage
STAGE_TAUGHT: Stage
STAGE_DONE: Stage

class PeerInfo(_message.Message):
    __slots__ = ("id", "address")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("peer", "address")
    PEER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    peer: str
    address: str
    def __init__(self, peer: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("rounds", "round_deadline", "auto_rounds")
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ROUND_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    AUTO_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: int
    round_deadline: float
    auto_rounds: bool
    def __init__(self, rounds: _Optional[int] = ..., round_deadline: _Optional[float] = ..., auto_rounds: _Optional[bool] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("peer",)
    PEER_FIELD_NUMBER: _ClassVar[int]
    peer: str
    def __init__(self, peer: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("ok",)
    OK_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    def __init__(self, ok: _Optional[bool] = ...) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPeersReply(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[PeerInfo]
    def __init__(self, peers: _Optional[_Iterable[_Union[PeerInfo, _Mapping]]] = ...) -> None: ...

class WaitRoundRequest(_message.Message):
    __slots__ = ("peer", "round", "stage", "profile_json", "fanout")
    PEER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_JSON_FIELD_NUMBER: _ClassVar[int]
    FANOUT_FIELD_NUMBER: _ClassVar[int]
    peer: str
    round: int
    stage: Stage
    profile_json: str
    fanout: int
    def __init__(self, peer: _Optional[str] = ..., round: _Optional[int] = ..., stage: _Optional[_Union[Stage, str]] = ..., profile_json: _Optional[str] = ..., fanout: _Optional[int] = ...) -> None: ...

class WaitRoundReply(_message.Message):
    __slots__ = ("arrived", "timed_out", "stopped", "makeup", "planned", "students")
    ARRIVED_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    MAKEUP_FIELD_NUMBER: _ClassVar[int]
    PLANNED_FIELD_NUMBER: _ClassVar[int]
    STUDENTS_FIELD_NUMBER: _ClassVar[int]
    arrived: _containers.RepeatedScalarFieldContainer[str]
    timed_out: bool
    stopped: str
    makeup: _containers.RepeatedScalarFieldContainer[str]
    planned: bool
    students: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, arrived: _Optional[_Iterable[str]] = ..., timed_out: _Optional[bool] = ..., stopped: _Optional[str] = ..., makeup: _Optional[_Iterable[str]] = ..., planned: _Optional[bool] = ..., students: _Optional[_Iterable[str]] = ...) -> None: ...

class MetricsRequest(_message.Message):
    __slots__ = ("peer", "round", "json")
    PEER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    peer: str
    round: int
    json: str
    def __init__(self, peer: _Optional[str] = ..., round: _Optional[int] = ..., json: _Optional[str] = ...) -> None: ...

class MetricsReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("peer",)
    PEER_FIELD_NUMBER: _ClassVar[int]
    peer: str
    def __init__(self, peer: _Optional[str] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
