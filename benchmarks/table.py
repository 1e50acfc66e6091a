"""The benchmark's table: every figure with its reference value and target."""
from __future__ import annotations


ROWS = (
    ("search_step_s", "BNAS search step (s)", "{:.3f}"),
    ("search_step_float32_s", "BNAS search step, float32 convs (s)", "{:.3f}"),
    ("bars_search_step_s", "BARS search step (s)", "{:.3f}"),
    ("bars_first_step_s", "BARS first search step from launch (s)", "{:.1f}"),
    ("bars_peak_rss_mb", "peak RSS of the BARS search (MB)", "{:.0f}"),
    ("bars_gmac_per_step", "BARS supernet GMAC per bilevel step", "{:.1f}"),
    ("gmac_per_step", "BNAS supernet GMAC per bilevel step", "{:.1f}"),
    ("bars_ms_per_gmac", "BARS step ms per GMAC", "{:.2f}"),
    ("ms_per_gmac", "BNAS step ms per GMAC", "{:.2f}"),
    ("bars_ms_per_gmac_vs_bnas", "BARS / BNAS ms per GMAC", "{:.2f}"),
    ("first_step_s", "first search step from process start (s)", "{:.1f}"),
    ("peak_rss_mb", "peak RSS of the search (MB)", "{:.0f}"),
    ("train_step_s", "BNAS-A train step (s)", "{:.3f}"),
    ("train_step_float32_s", "BNAS-A train step, float32 convs (s)", "{:.3f}"),
    ("train_step_bars_s", "BARS network train step (s)", "{:.3f}"),
    ("train_step_xnor_resnet18_s", "XNOR ResNet-18 train step (s)", "{:.3f}"),
    ("train_images_per_s", "train step consumes (images/s)", "{:.1f}"),
    ("input_images_per_s", "input pipeline, steady (images/s)", "{:.0f}"),
    ("input_first_pass_images_per_s", "input pipeline, first pass (images/s)", "{:.0f}"),
    ("input_ratio", "input / consumption", "{:.1f}x"),
    ("tflite_binary_bytes", "binary .tflite (bytes)", "{:,}"),
    ("tflite_float_bytes", "float twin .tflite (bytes)", "{:,}"),
    ("size_ratio", "float / binary size", "{:.2f}x"),
    ("tflite_binary_bytes_binres", "binary .tflite, residual=binary (bytes)", "{:,}"),
    ("tflite_float_bytes_binres", "float twin, residual=binary (bytes)", "{:,}"),
    ("size_ratio_binres", "float / binary size, residual=binary", "{:.2f}x"),
    ("bconv_ops", "LceBconv2d ops", "{}"),
    ("binary_convs", "binary convs (Keras)", "{}"),
    ("live_binary_convs", "binary convs reaching the output", "{}"),
    ("latency_binary_ms", "latency binary, 1 image (ms)", "{:.2f}"),
    ("latency_float_ms", "latency float twin, 1 image (ms)", "{:.2f}"),
    ("latency_binary_binres_ms", "latency binary residual=binary (ms)", "{:.2f}"),
)


def format_table(result) -> str:
    """A readable table of the figures, with reference values and targets."""
    lines = [f"{'figure':<44} {'value':>14} {'reference':>10} {'target':>10}  met",
             "-" * 86]
    if result.get("quick"):
        lines.insert(0, "QUICK shapes: a smoke run. The reference column, the speed-ups and "
                        "the targets are for the full shapes and say nothing here.")
    targets = result.get("targets", {})
    for key, label, fmt in ROWS:
        if result.get(key) is None:
            continue
        ref = result.get("reference", {}).get(key)
        target = targets.get(key, {})
        met = target.get("met")
        lines.append(f"{label:<44} {fmt.format(result[key]):>14} "
                     f"{'' if ref is None else ref:>10} {target.get('target', ''):>10}  "
                     f"{'' if met is None else ('yes' if met else 'NO')}")
    for key, factor in result.get("speedup", {}).items():
        lines.append(f"speed-up vs reference, {key:<21} {factor:>14.2f}x")
    if "all_binary_convs_converted" in result:
        lines.append(f"every live binary conv is LceBconv2d: "
                     f"{'yes' if result['all_binary_convs_converted'] else 'NO'}")
    env = result.get("environment", {})
    lines.append(f"TensorFlow {env.get('tensorflow')}, {env.get('cpu')} ({env.get('cpu_count')} "
                 f"CPUs), threads intra {env.get('intra_op_threads')} / inter "
                 f"{env.get('inter_op_threads')}{', QUICK shapes' if result.get('quick') else ''}")
    speed = env.get("machine_speed") or {}
    if speed:
        def figures(key):
            return " / ".join(f"{speed[when][key]:.1f}" for when in ("start", "end")
                              if when in speed)
        lines.append(f"machine speed (start / end): float32 matmul GFLOP/s "
                     f"{figures('matmul_gflops')}, elementwise GB/s "
                     f"{figures('elementwise_gbps')}")
    return "\n".join(lines)
