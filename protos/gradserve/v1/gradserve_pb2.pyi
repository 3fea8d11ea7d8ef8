from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Selection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SELECTION_UNSPECIFIED: _ClassVar[Selection]
    SELECTION_ALL: _ClassVar[Selection]
    SELECTION_LEAVES: _ClassVar[Selection]
    SELECTION_NODES: _ClassVar[Selection]
SELECTION_UNSPECIFIED: Selection
SELECTION_ALL: Selection
SELECTION_LEAVES: Selection
SELECTION_NODES: Selection

class Graph(_message.Message):
    __slots__ = ("op_names", "node_ops", "input_counts", "input_ids", "leaf_values", "labels")
    OP_NAMES_FIELD_NUMBER: _ClassVar[int]
    NODE_OPS_FIELD_NUMBER: _ClassVar[int]
    INPUT_COUNTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_IDS_FIELD_NUMBER: _ClassVar[int]
    LEAF_VALUES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    op_names: _containers.RepeatedScalarFieldContainer[str]
    node_ops: _containers.RepeatedScalarFieldContainer[int]
    input_counts: _containers.RepeatedScalarFieldContainer[int]
    input_ids: _containers.RepeatedScalarFieldContainer[int]
    leaf_values: _containers.RepeatedScalarFieldContainer[float]
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, op_names: _Optional[_Iterable[str]] = ..., node_ops: _Optional[_Iterable[int]] = ..., input_counts: _Optional[_Iterable[int]] = ..., input_ids: _Optional[_Iterable[int]] = ..., leaf_values: _Optional[_Iterable[float]] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("graph", "outputs", "seeds", "selection", "nodes", "chunk_size", "plan_digest", "rows", "allow_non_finite", "leaf_tangents")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    PLAN_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_NON_FINITE_FIELD_NUMBER: _ClassVar[int]
    LEAF_TANGENTS_FIELD_NUMBER: _ClassVar[int]
    graph: Graph
    outputs: _containers.RepeatedScalarFieldContainer[int]
    seeds: _containers.RepeatedScalarFieldContainer[float]
    selection: Selection
    nodes: _containers.RepeatedScalarFieldContainer[int]
    chunk_size: int
    plan_digest: bytes
    rows: int
    allow_non_finite: bool
    leaf_tangents: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, graph: _Optional[_Union[Graph, _Mapping]] = ..., outputs: _Optional[_Iterable[int]] = ..., seeds: _Optional[_Iterable[float]] = ..., selection: _Optional[_Union[Selection, str]] = ..., nodes: _Optional[_Iterable[int]] = ..., chunk_size: _Optional[int] = ..., plan_digest: _Optional[bytes] = ..., rows: _Optional[int] = ..., allow_non_finite: _Optional[bool] = ..., leaf_tangents: _Optional[_Iterable[float]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("node_ids", "values", "grads", "plan_digest", "rows", "value_tangents", "grad_tangents")
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    GRADS_FIELD_NUMBER: _ClassVar[int]
    PLAN_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    VALUE_TANGENTS_FIELD_NUMBER: _ClassVar[int]
    GRAD_TANGENTS_FIELD_NUMBER: _ClassVar[int]
    node_ids: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    grads: _containers.RepeatedScalarFieldContainer[float]
    plan_digest: bytes
    rows: int
    value_tangents: _containers.RepeatedScalarFieldContainer[float]
    grad_tangents: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, node_ids: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ..., grads: _Optional[_Iterable[float]] = ..., plan_digest: _Optional[bytes] = ..., rows: _Optional[int] = ..., value_tangents: _Optional[_Iterable[float]] = ..., grad_tangents: _Optional[_Iterable[float]] = ...) -> None: ...

class GradientChunk(_message.Message):
    __slots__ = ("node_ids", "values", "grads", "total_nodes", "plan_digest", "rows", "first_row", "value_tangents", "grad_tangents")
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    GRADS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_NODES_FIELD_NUMBER: _ClassVar[int]
    PLAN_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FIRST_ROW_FIELD_NUMBER: _ClassVar[int]
    VALUE_TANGENTS_FIELD_NUMBER: _ClassVar[int]
    GRAD_TANGENTS_FIELD_NUMBER: _ClassVar[int]
    node_ids: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    grads: _containers.RepeatedScalarFieldContainer[float]
    total_nodes: int
    plan_digest: bytes
    rows: int
    first_row: int
    value_tangents: _containers.RepeatedScalarFieldContainer[float]
    grad_tangents: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, node_ids: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ..., grads: _Optional[_Iterable[float]] = ..., total_nodes: _Optional[int] = ..., plan_digest: _Optional[bytes] = ..., rows: _Optional[int] = ..., first_row: _Optional[int] = ..., value_tangents: _Optional[_Iterable[float]] = ..., grad_tangents: _Optional[_Iterable[float]] = ...) -> None: ...

class ListOpsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListOpsResponse(_message.Message):
    __slots__ = ("ops", "server_version")
    OPS_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[OpInfo]
    server_version: str
    def __init__(self, ops: _Optional[_Iterable[_Union[OpInfo, _Mapping]]] = ..., server_version: _Optional[str] = ...) -> None: ...

class OpInfo(_message.Message):
    __slots__ = ("name", "arity", "variadic", "doc", "distribution", "version", "entry_point", "second_order")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARITY_FIELD_NUMBER: _ClassVar[int]
    VARIADIC_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTRY_POINT_FIELD_NUMBER: _ClassVar[int]
    SECOND_ORDER_FIELD_NUMBER: _ClassVar[int]
    name: str
    arity: int
    variadic: bool
    doc: str
    distribution: str
    version: str
    entry_point: str
    second_order: bool
    def __init__(self, name: _Optional[str] = ..., arity: _Optional[int] = ..., variadic: _Optional[bool] = ..., doc: _Optional[str] = ..., distribution: _Optional[str] = ..., version: _Optional[str] = ..., entry_point: _Optional[str] = ..., second_order: _Optional[bool] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("id", "request", "timeout_ms", "cancel")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    id: int
    request: EvaluateRequest
    timeout_ms: int
    cancel: bool
    def __init__(self, id: _Optional[int] = ..., request: _Optional[_Union[EvaluateRequest, _Mapping]] = ..., timeout_ms: _Optional[int] = ..., cancel: _Optional[bool] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("id", "response", "status")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    id: int
    response: EvaluateResponse
    status: bytes
    def __init__(self, id: _Optional[int] = ..., response: _Optional[_Union[EvaluateResponse, _Mapping]] = ..., status: _Optional[bytes] = ...) -> None: ...
