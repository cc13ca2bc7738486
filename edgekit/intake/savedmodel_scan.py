"""Static safety scan of a TensorFlow SavedModel, run before TensorFlow loads it.

A SavedModel is code: ``tf.saved_model.load`` runs its resource initializers and edgekit runs its
serving signature, so a crafted model can write files, read them, start servers or call back
into Python on the user's machine. This module parses ``saved_model.pb`` with the protobuf
classes alone (nothing is imported into a graph or run) and lists every op with an effect
outside the tensors it computes, wherever it sits: the main graph, every library function, and
so every function a node calls through an attr or a nested body.

The one exception is the model's own checkpoint machinery. Every SavedModel has save and
restore code that calls SaveV2/MergeV2Checkpoints/RestoreV2 on the path fed through the
``saver_def`` filename tensor; those ops are allowed only in nodes and functions that nothing
but that machinery can reach, so a signature or initializer that calls them is refused.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import ModelFormatError, require

# protobuf cannot parse a message of 2 GiB or more; saying so beats a DecodeError.
MAX_PROTO_BYTES = 2**31 - 1


def _ops(reason: str, names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), reason)


# op type -> what it does that edgekit will not run. Pure summary/encode ops (ScalarSummary,
# EncodePng, ...) only build strings and stay allowed; the writers that put them on disk do not.
SIDE_EFFECT_OPS: dict[str, str] = {
    **_ops(
        "file I/O",
        "WriteFile ReadFile MatchingFiles ImmutableConst FileSystemSetConfiguration "
        "InitializeTableFromTextFile InitializeTableFromTextFileV2 LoadAndRemapMatrix "
        "GenerateVocabRemapping RecordInput DumpTensor CalibrationStatisticsSaver",
    ),
    **_ops("Python callback", "PyFunc PyFuncStateless EagerPyFunc"),
    **_ops(
        "summary writer",
        "SummaryWriter CreateSummaryFileWriter CreateSummaryDbWriter WriteSummary "
        "WriteScalarSummary WriteHistogramSummary WriteImageSummary WriteAudioSummary "
        "WriteGraphSummary WriteRawProtoSummary ImportEvent FlushSummaryWriter "
        "CloseSummaryWriter StatsAggregatorSetSummaryWriter",
    ),
    **_ops(
        "file-reading or file-writing dataset",
        "TFRecordDataset TFRecordDatasetV2 TextLineDataset FixedLengthRecordDataset "
        "FixedLengthRecordDatasetV2 CSVDataset CSVDatasetV2 ExperimentalCSVDataset SqlDataset "
        "ExperimentalSqlDataset LMDBDataset ExperimentalLMDBDataset MatchingFilesDataset "
        "ExperimentalMatchingFilesDataset CacheDataset CacheDatasetV2 SaveDataset SaveDatasetV2 "
        "LoadDataset SnapshotDataset SnapshotDatasetV2 SnapshotDatasetReader "
        "SnapshotNestedDatasetReader SnapshotChunkDataset ListSnapshotChunksDataset "
        "DatasetToTFRecord ExperimentalDatasetToTFRecord DistributedSave",
    ),
    **_ops(
        "file reader",
        "WholeFileReader WholeFileReaderV2 TFRecordReader TFRecordReaderV2 TextLineReader "
        "TextLineReaderV2 FixedLengthRecordReader FixedLengthRecordReaderV2 LMDBReader "
        "IdentityReader IdentityReaderV2",
    ),
    **_ops(
        "debug dump",
        "DebugIdentity DebugIdentityV2 DebugIdentityV3 DebugNanCount DebugNumericSummary "
        "DebugNumericSummaryV2",
    ),
    **_ops(
        "network",
        "RpcServer RpcServerStart RpcServerRegister RpcClient RpcCall RpcCheckStatus "
        "RpcGetValue DeleteRpcFutureResource DataServiceDataset DataServiceDatasetV2 "
        "DataServiceDatasetV3 DataServiceDatasetV4 RegisterDataset RegisterDatasetV2 "
        "RemoteCall WorkerHeartbeat CollectiveReduce CollectiveReduceV2 CollectiveReduceV3 "
        "CollectiveGather CollectiveGatherV2 CollectiveBcastSend CollectiveBcastSendV2 "
        "CollectiveBcastRecv CollectiveBcastRecvV2 CollectiveAllToAllV2 CollectiveAllToAllV3 "
        "CollectiveReduceScatterV2 CollectivePermute CollectiveInitializeCommunicator "
        "CollectiveAssignGroupV2",
    ),
}
SAVE_OPS = frozenset({"Save", "SaveSlices", "SaveV2", "MergeV2Checkpoints"})
RESTORE_OPS = frozenset({"Restore", "RestoreSlice", "RestoreV2", "DTensorRestoreV2"})

# Ops that are harmless except with one attr value: (attr, default, allowed values or prefix).
# tf.print to stderr/stdout/the log leaves nothing behind and genuine models keep such prints;
# its output_stream "file://<path>" appends to any file. A proto op's descriptor_source other
# than "local://" is a path it reads.
_ATTR_RULES: dict[str, tuple[str, bytes, tuple[bytes, ...]]] = {
    "PrintV2": ("output_stream", b"stderr", (b"stderr", b"stdout", b"log(")),
    "DecodeProtoV2": ("descriptor_source", b"local://", (b"local://",)),
    "EncodeProto": ("descriptor_source", b"local://", (b"local://",)),
}
MAIN_GRAPH = "the main graph"


@dataclass(frozen=True, order=True)
class Finding:
    """One refused op: its type and where it sits (a function name or the main graph)."""

    op: str
    where: str

    def __str__(self) -> str:
        return f"{self.op} (in {self.where})"


def read_saved_model(path: Path) -> Any:
    """Parse ``path``'s saved_model.pb (or .pbtxt, TensorFlow's own order) without running it."""
    require("tensorflow", "tensorflow")
    from google.protobuf import message, text_format
    from tensorflow.core.protobuf import saved_model_pb2

    file = path / "saved_model.pb"
    if not os.path.lexists(file):
        file = path / "saved_model.pbtxt"
    try:
        st = file.stat()
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read {file.name}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ModelFormatError(f"{path}: {file.name} is not a regular file")
    if st.st_size > MAX_PROTO_BYTES:
        raise ModelFormatError(
            f"{path}: {file.name} is {st.st_size / 2**30:.1f} GiB, over the 2 GiB protobuf "
            "limit; split the model or export it to ONNX yourself"
        )
    proto = saved_model_pb2.SavedModel()
    try:
        data = file.read_bytes()
        if file.suffix == ".pbtxt":
            text_format.Parse(data.decode("utf-8"), proto)
        else:
            proto.ParseFromString(data)
    except (OSError, UnicodeDecodeError, message.DecodeError, text_format.ParseError) as exc:
        raise ModelFormatError(
            f"{path}: {file.name} is not a SavedModel (corrupt or truncated?): {exc}"
        ) from exc
    return proto


def scan(path: Path) -> list[Finding]:
    """Ops in the SavedModel at ``path`` that edgekit must not run; empty when it is clean."""
    return scan_proto(read_saved_model(path))


def scan_proto(saved_model: Any) -> list[Finding]:
    """:func:`scan` for an already parsed ``SavedModel`` message."""
    found: set[Finding] = set()
    for meta in saved_model.meta_graphs:
        found.update(_scan_meta_graph(meta))
    return sorted(found)


def _refused(node: Any) -> bool:
    if node.op in SIDE_EFFECT_OPS:
        return True
    rule = _ATTR_RULES.get(node.op)
    if rule is None:
        return False
    name, default, allowed = rule
    if name not in node.attr:
        value = default
    elif node.attr[name].WhichOneof("value") == "s":
        value = node.attr[name].s
    else:
        return True  # a placeholder bound by the caller: its value is not known here
    return not value.startswith(allowed)


def _attr_funcs(value: Any) -> Iterator[str]:
    kind = value.WhichOneof("value")
    funcs = [value.func] if kind == "func" else list(value.list.func) if kind == "list" else []
    for func in funcs:
        yield func.name
        for nested in func.attr.values():
            yield from _attr_funcs(nested)


def _callees(node: Any, library: Mapping[str, Any]) -> set[str]:
    """Library functions a node calls: by op name, or through any func-valued attr."""
    names = {node.op} if node.op in library else set()
    for value in node.attr.values():
        names.update(_attr_funcs(value))
    return names & library.keys()


def _closure(start: Iterable[str], edges: Mapping[str, Iterable[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        item = todo.pop()
        if item not in seen:
            seen.add(item)
            todo.extend(edges.get(item, ()))
    return seen


def _node_name(tensor: str) -> str:
    return tensor.lstrip("^").split(":")[0]


def _tensor_names(info: Any) -> Iterator[str]:
    kind = info.WhichOneof("encoding")
    if kind == "name":
        yield info.name
    elif kind == "coo_sparse":
        sparse = info.coo_sparse
        yield from (sparse.values_tensor_name, sparse.indices_tensor_name)
        yield sparse.dense_shape_tensor_name
    elif kind == "composite_tensor":
        for component in info.composite_tensor.components:
            yield from _tensor_names(component)


def _entry_nodes(meta: Any) -> set[str]:
    """Main-graph nodes a loader or caller runs directly: signatures and init collections."""
    names = set()
    for sig in meta.signature_def.values():
        for info in [*sig.inputs.values(), *sig.outputs.values()]:
            names.update(_tensor_names(info))
    for collection in meta.collection_def.values():
        names.update(collection.node_list.value)
    return {_node_name(n) for n in names}


def _scan_meta_graph(meta: Any) -> set[Finding]:
    graph = meta.graph_def
    library = {f.signature.name: f for f in graph.library.function}
    nodes = {n.name: n for n in graph.node}
    inputs = {n.name: [_node_name(i) for i in n.input] for n in graph.node}
    consumers: dict[str, list[str]] = {}
    for name, srcs in inputs.items():
        for src in srcs:
            consumers.setdefault(src, []).append(name)
    calls = {
        f: set().union(*(_callees(n, library) for n in f_def.node_def))
        for f, f_def in library.items()
    }
    node_calls = {n.name: _callees(n, library) for n in graph.node}

    saver = meta.saver_def
    filename = _node_name(saver.filename_tensor_name)
    roots = {
        "save": _node_name(saver.save_tensor_name),
        "restore": _node_name(saver.restore_op_name),
    }
    entries = _entry_nodes(meta)
    allowed_nodes: dict[str, set[str]] = {}
    allowed_funcs: dict[str, set[str]] = {}
    for role, root in roots.items():
        # One node as both roots would let the restore that TF1 loading runs reach SaveV2.
        if not (filename in nodes and root in nodes) or roots["save"] == roots["restore"]:
            allowed_nodes[role] = allowed_funcs[role] = set()
            continue
        # The machinery: what the role's root depends on that is fed by the filename tensor,
        # minus anything whose output also reaches a node outside it, a signature, an init op
        # or the other role.
        candidates = _closure([root], inputs) & _closure([filename], consumers)
        escapes = {c for n in candidates for c in consumers.get(n, ()) if c not in candidates}
        other = {r for r in roots.values() if r != root} & nodes.keys()
        machinery = candidates - _closure(escapes | entries | other, inputs)
        allowed_nodes[role] = machinery
        reach = _closure(set().union(*(node_calls[n] for n in machinery)), calls)
        outside = {f for n, fs in node_calls.items() if n not in machinery for f in fs}
        outside |= _object_graph_functions(meta) | (library.keys() - reach)
        allowed_funcs[role] = reach - _closure(outside, calls)

    found: set[Finding] = set()
    places = [(MAIN_GRAPH, graph.node, None)]
    places += [(name, f.node_def, name) for name, f in library.items()]
    for where, body, func in places:
        for node in body:
            if node.op in SAVE_OPS:
                ok = _allowed(node.name, func, allowed_nodes["save"], allowed_funcs["save"])
            elif node.op in RESTORE_OPS:
                ok = _allowed(node.name, func, allowed_nodes["restore"], allowed_funcs["restore"])
            else:
                ok = not _refused(node)
            if not ok:
                found.add(Finding(node.op, where))
    return found


def _allowed(node: str, func: str | None, nodes: set[str], funcs: set[str]) -> bool:
    return node in nodes if func is None else func in funcs


def _object_graph_functions(meta: Any) -> set[str]:
    """Functions the TF2 object graph binds to objects: methods, signatures, initializers."""
    graph = meta.object_graph_def
    names = set(graph.concrete_functions)
    for obj in graph.nodes:
        kind = obj.WhichOneof("kind")
        if kind == "function":
            names.update(obj.function.concrete_functions)
        elif kind == "bare_concrete_function":
            names.add(obj.bare_concrete_function.concrete_function_name)
    return names
