from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArrayInfo(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class BlobHeader(_message.Message):
    __slots__ = ("peer", "round", "spec_json", "arrays")
    PEER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    peer: str
    round: int
    spec_json: str
    arrays: _containers.RepeatedCompositeFieldContainer[ArrayInfo]
    def __init__(self, peer: _Optional[str] = ..., round: _Optional[int] = ..., spec_json: _Optional[str] = ..., arrays: _Optional[_Iterable[_Union[ArrayInfo, _Mapping]]] = ...) -> None: ...

class BatchHeader(_message.Message):
    __slots__ = ("sender", "receiver", "round", "seq", "classes", "features", "x", "y", "distance", "levels", "proba")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    PROBA_FIELD_NUMBER: _ClassVar[int]
    sender: str
    receiver: str
    round: int
    seq: int
    classes: _containers.RepeatedScalarFieldContainer[str]
    features: _containers.RepeatedScalarFieldContainer[str]
    x: ArrayInfo
    y: ArrayInfo
    distance: ArrayInfo
    levels: int
    proba: ArrayInfo
    def __init__(self, sender: _Optional[str] = ..., receiver: _Optional[str] = ..., round: _Optional[int] = ..., seq: _Optional[int] = ..., classes: _Optional[_Iterable[str]] = ..., features: _Optional[_Iterable[str]] = ..., x: _Optional[_Union[ArrayInfo, _Mapping]] = ..., y: _Optional[_Union[ArrayInfo, _Mapping]] = ..., distance: _Optional[_Union[ArrayInfo, _Mapping]] = ..., levels: _Optional[int] = ..., proba: _Optional[_Union[ArrayInfo, _Mapping]] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: BlobHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[BlobHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ExampleChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: BatchHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[BatchHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...
