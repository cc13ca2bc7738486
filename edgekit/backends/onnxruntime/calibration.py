"""Calibration for static int8: ORT's calibration ranges, streamed with bounded memory, and
the peak RSS it took.

* Calibration runs here, not inside ``quantize_static``: its entropy calibrator is created with
  ``num_bins == num_quantized_bins == 128``, so the KL search has a single candidate and gives
  the MinMax range. We build the calibrator with a real histogram (2048 bins), save the ranges
  to ORT's calibration cache and hand that cache to ``quantize_static``
  (:func:`edgekit.backends.onnxruntime.int8.static_int8`).
* Calibration streams: MinMax keeps per-tensor ranges only; entropy/percentile, whose ORT
  calibrator would hold every activation of every sample before building histograms, run in
  two passes here (exact ranges per tensor, then histograms on those fixed ranges, merged a
  chunk of samples at a time), so that memory is bounded by a chunk and the ranges equal ORT's
  all-at-once ones. The note reports the chunks and the peak RSS (:class:`_PeakRss`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.onnxruntime.runtime import quiet
from edgekit.errors import DataError
from edgekit.model import Feeds
from edgekit.progress import progress
from edgekit.recipe import Recipe

# Histogram resolution for entropy/percentile calibration (TensorRT's classic 2048 -> 128).
_HIST_BINS = 2048
_ENTROPY_QUANT_BINS = 128


# A chunk of histogram calibration holds its samples' activations plus a copy of the largest
# tensor's (HistogramCollector stacks each tensor's list): at most this share of the memory
# available when calibration starts, and at most _MAX_CHUNK_BYTES, so that the footprint does
# not grow with the machine either.
_MEM_SHARE = 0.5
_MAX_CHUNK_BYTES = 2 << 30
# More samples per chunk buy nothing: the per-call overhead is already amortised.
_MAX_CHUNK = 32
_MINMAX_CHUNK = 32
_GIB = 1 << 30


class _Chunk:
    """ORT CalibrationDataReader giving the next ``size`` samples of a shared iterator, so that
    one progress bar spans every chunk."""

    def __init__(self, samples: Iterator[Feeds], size: int) -> None:
        self._samples = samples
        self._left = size

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._left == 0:
            return None
        item = next(self._samples, None)
        if item is None:
            return None
        self._left -= 1
        return dict(item)


def calibrate(
    model: Path, recipe: Recipe, samples: Sequence[Feeds], workdir: Path
) -> tuple[Any, dict[str, Any]]:
    """ORT's calibration ranges (``TensorsData``) for ``model`` over ``samples``, streamed with
    bounded memory, and what it took (chunks, peak RSS, seconds; ``note`` for the summary).

    MinMax: ORT's ``collect_data`` once per chunk; each call reduces its chunk to per-tensor
    min/max and merges them with the earlier ones by min/max, which is exact. (Its own
    ``max_intermediate_outputs`` option is not used: in ORT 1.20-1.23 it discards the chunk
    instead of merging it.) Entropy/percentile: see :func:`_stream_histograms`."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[recipe.calibration_method]
    opts: dict[str, Any] = {"symmetric": recipe.activation_symmetric}
    if recipe.calibration_method == "entropy":
        opts.update(num_bins=_HIST_BINS, num_quantized_bins=_ENTROPY_QUANT_BINS)
    elif recipe.calibration_method == "percentile":
        opts.update(num_bins=_HIST_BINS, percentile=recipe.percentile)
    with quiet():
        calibrator = create_calibrator(
            model,
            None,
            augmented_model_path=str(workdir / "augmented.onnx"),
            calibrate_method=method,
            extra_options=opts,
        )
    histogram = recipe.calibration_method != "minmax"
    available = _mem_available()
    if histogram:
        # Before any sample runs: a lower bound from the shapes ONNX inference knows.
        _check_fits(_declared_bytes(calibrator), available, recipe.calibration_method)
    with _PeakRss() as rss, quiet():
        start = time.perf_counter()
        if histogram:
            chunks, chunk, sample_bytes = _stream_histograms(calibrator, samples, available)
        else:
            it = iter(progress(samples, desc="calibrating"))
            chunk, sample_bytes = _MINMAX_CHUNK, None
            chunks = len(range(0, len(samples), chunk))
            for _ in range(chunks):
                calibrator.collect_data(_Chunk(it, chunk))
        collected = time.perf_counter()
        ranges = calibrator.compute_data()
        done = time.perf_counter()
    stats: dict[str, Any] = {
        "method": recipe.calibration_method,
        "samples": len(samples),
        "chunks": chunks,
        "chunk_samples": chunk,
        "sample_activation_bytes": sample_bytes,
        "peak_rss_bytes": rss.peak,
        "rss_before_bytes": rss.start,
        "peak_rss_measured": rss.how,
        "seconds": round(done - start, 2),
        "threshold_search_seconds": round(done - collected, 2),
    }
    peak = f", peak RSS {rss.peak / _GIB:.1f} GiB" if rss.peak else ""
    note = (
        f"calibration: {recipe.calibration_method} over {len(samples)} samples in {chunks} "
        f"chunk{'s' if chunks != 1 else ''}{peak} (whole process; {rss.start / _GIB:.1f} GiB "
        f"before), {done - start:.1f} s"
        if rss.start
        else f"calibration: {recipe.calibration_method} over {len(samples)} samples in "
        f"{chunks} chunks, {done - start:.1f} s"
    )
    search = done - collected
    if recipe.calibration_method == "entropy" and search > 0.5 * (done - start):
        tensors = len(calibrator.tensors_to_calibrate or ())
        note += (
            f"; {search:.0f} s of it in ORT's KL threshold search, a Python loop over "
            f"{(_HIST_BINS - _ENTROPY_QUANT_BINS) // 2 + 1} candidate thresholds for each of "
            f"{tensors} tensors, whatever the sample count (minmax or percentile skip it)"
        )
    stats["note"] = note
    return ranges, stats


def _stream_histograms(
    calibrator: Any, samples: Sequence[Feeds], available: int | None
) -> tuple[int, int, int]:
    """Entropy/percentile histograms over ``samples`` a chunk at a time; (chunks, chunk size,
    bytes of one sample's activations).

    ORT's HistogramCalibrater keeps every activation of every sample, then histograms each
    tensor over [-T, T], T its largest |value|. Given more data later, ORT's collector widens
    the histogram by whole bins of the first call's width, so chunks fed to it one after
    another would end on other bins than the all-at-once histogram. Here a first pass runs
    every sample once and keeps only each tensor's min, max (and min |value| for symmetric
    percentile); the collector starts from empty histograms on exactly the bins the
    all-at-once call would have made, and every chunk then lands on those bins (ORT's
    ``merge_histogram`` adds counts when the range does not grow). Counts, bins and min/max
    are then the all-at-once ones, so the ranges are too; the price is running each sample
    twice."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    sess = calibrator.infer_session
    names = [o.name for o in sess.get_outputs()]
    graph_inputs = {i.name for i in sess.get_inputs()}
    wanted = [(i, n) for i, n in enumerate(names) if n in calibrator.tensors_to_calibrate]
    absolute = calibrator.method == "percentile" and calibrator.symmetric
    lo: dict[str, Any] = {}
    hi: dict[str, Any] = {}
    lo_abs: dict[str, Any] = {}
    dtypes: dict[str, Any] = {}
    sample_bytes = largest = 0
    for feeds in progress(samples, desc="calibrating: ranges"):
        outs = sess.run(None, dict(feeds))
        size = sum(outs[i].nbytes for i, _ in wanted)
        if size > sample_bytes:
            sample_bytes = size
            _check_fits(size, available, calibrator.method)
        for i, name in wanted:
            arr = outs[i]
            largest = max(largest, arr.nbytes)
            dtypes[name] = arr.dtype
            if arr.size == 0:
                continue
            # fmin/fmax skip NaN as ORT's nanmin/nanmax do
            mn, mx = np.nanmin(arr), np.nanmax(arr)
            lo[name] = mn if name not in lo else np.fmin(lo[name], mn)
            hi[name] = mx if name not in hi else np.fmax(hi[name], mx)
            if absolute:
                amin = np.nanmin(np.abs(arr))
                lo_abs[name] = amin if name not in lo_abs else np.fmin(lo_abs[name], amin)
        del outs
    collector = HistogramCollector(
        method=calibrator.method,
        symmetric=calibrator.symmetric,
        num_bins=calibrator.num_bins,
        num_quantized_bins=calibrator.num_quantized_bins,
        percentile=calibrator.percentile,
        scenario=calibrator.scenario,
    )
    bins = calibrator.num_bins
    for _, name in wanted:
        dtype = dtypes[name]
        mn = lo.get(name, np.array(0, dtype))
        mx = hi.get(name, np.array(0, dtype))
        if absolute:
            # ORT's first histogram of |x| spans [min |x|, max |x|] (np.histogram's own range)
            ends = np.array([lo_abs.get(name, 0), max(abs(mn), abs(mx))], dtype)
            edges = np.histogram(ends, bins=bins)[1].astype(dtype)
            collector.histogram_dict[name] = (np.zeros(bins, np.int64), edges, mn, mx)
        else:
            threshold = np.array(max(abs(mn), abs(mx)), dtype=dtype)
            edges = np.histogram(np.empty(0, dtype), bins, range=(-threshold, threshold))[1]
            collector.histogram_dict[name] = (np.zeros(bins, np.int64), edges, mn, mx, threshold)
    budget = (
        _MAX_CHUNK_BYTES if available is None else min(_MAX_CHUNK_BYTES, available * _MEM_SHARE)
    )
    chunk = int(max(1, min(_MAX_CHUNK, len(samples), budget // max(1, sample_bytes + largest))))
    chunks = 0
    held: dict[str, list[np.ndarray]] = {name: [] for _, name in wanted}
    for k, feeds in enumerate(progress(samples, desc="calibrating: histograms"), 1):
        outs = sess.run(None, dict(feeds))
        for i, name in wanted:
            # ORT copies outputs that are graph inputs (onnxruntime#21922); so do we
            held[name].append(outs[i].copy() if name in graph_inputs else outs[i])
        del outs
        if k % chunk == 0 or k == len(samples):
            collector.collect(held)
            held = {name: [] for _, name in wanted}
            chunks += 1
    calibrator.collector = collector
    return chunks, chunk, sample_bytes


def _declared_bytes(calibrator: Any) -> int:
    """Bytes of one sample's calibrated activations from the shapes ONNX shape inference wrote
    into the augmented model; a symbolic dimension counts as 1, so this is a lower bound."""
    from onnx import helper

    infos = {vi.name: vi for vi in calibrator.model.graph.value_info}
    infos.update({vi.name: vi for vi in calibrator.model.graph.output})
    total = 0
    for name in calibrator.tensors_to_calibrate or ():
        vi = infos.get(name)
        if vi is None or not vi.type.HasField("tensor_type"):
            continue
        kind = vi.type.tensor_type
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(kind.elem_type)).itemsize
        except (KeyError, TypeError, ValueError):
            continue
        count = 1
        for dim in kind.shape.dim:
            count *= dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else 1
        total += count * itemsize
    return total


def _check_fits(sample_bytes: int, available: int | None, method: str) -> None:
    """Refuse a histogram calibration that cannot fit even one sample at a time: it holds one
    sample's activations and a copy of a tensor's while histogramming."""
    if available is None or 2 * sample_bytes <= available:
        return
    raise DataError(
        f"--calibration-method {method} needs the activations of one sample in memory, about "
        f"{2 * sample_bytes / _GIB:.1f} GiB for this model, and {available / _GIB:.1f} GiB is "
        "available; use --calibration-method minmax (per-tensor ranges only), smaller inputs, "
        "or a machine with more memory"
    )


def _mem_available() -> int | None:
    """MemAvailable from /proc/meminfo in bytes; None where there is none."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def _status_bytes(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


class _PeakRss:
    """The peak resident set size of this whole process over a ``with`` block.

    Linux keeps the peak (VmHWM) itself, and writing 5 to /proc/self/clear_refs resets it to
    the current RSS, so the peak read at the end is the kernel's exact one for the block
    (``how = "VmHWM"``). Where that reset is refused, a thread samples VmRSS every 20 ms and
    can miss a short spike (``how = "sampled VmRSS"``); without /proc, ``peak`` is None."""

    def __init__(self) -> None:
        self.start: int | None = None
        self.peak: int | None = None
        self.how = "unavailable"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _PeakRss:
        self.start = _status_bytes("VmRSS")
        if self.start is None:
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.how = "VmHWM"
        except OSError:
            self.how = "sampled VmRSS"
            self.peak = self.start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            rss = _status_bytes("VmRSS") or 0
            self.peak = max(self.peak or 0, rss)

    def __exit__(self, *exc: object) -> None:
        if self.how == "VmHWM":
            self.peak = _status_bytes("VmHWM")
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
