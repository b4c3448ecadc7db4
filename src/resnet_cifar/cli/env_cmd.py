"""`resnet-cifar env [--json] [--device auto|cpu|cuda|mps] [--data-dir data] [--no-verify]`."""

from __future__ import annotations

import json

from ..config import DEVICES


def add_parser(subparsers):
    p = subparsers.add_parser(
        "env", help="versions, accelerators, bf16, torch.compile and datasets on this machine",
        description="Check the environment: Python/torch versions, CPU threads, CUDA/MPS with a real "
                    "tensor operation on each, bf16 and torch.compile support, and the datasets "
                    "present (and MD5-verified) under --data-dir.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="auto: check every accelerator; cuda/mps: fail (exit 2) when it is absent")
    p.add_argument("--data-dir", default="data", help="where datasets live (default: data)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the MD5 check of CIFAR batch files (presence only)")
    p.set_defaults(run=run)
    return p


def _yes(v) -> str:
    return "yes" if v else "no"


def _check(c: dict | None) -> str:
    if not c:
        return "not checked"
    return "ok" if c["ok"] else f"FAILED ({c['error']})"


LABEL = 12  # width of the label column: every value starts at column 13


def _row(label: str, text: str) -> str:
    return f"{label:<{LABEL}} {text}"


def _versions(info: dict) -> list[str]:
    onnx_ok = info["onnx"] and info["onnxruntime"]
    return [
        _row("resnet-cifar", info["resnet_cifar"]),
        _row("Python", f"{info['python']} ({info['python_executable']})"),
        _row("Platform", info["platform"]),
        _row("torch", info["torch"]),
        _row("torchvision", info["torchvision"] or "not installed (only needed by `bench`)"),
        _row("onnx export", f"onnx {info['onnx'] or 'missing'}, onnxruntime {info['onnxruntime'] or 'missing'}"
             + ("" if onnx_ok else "  (pip install 'resnet-cifar[onnx]')")),
    ]


def _cuda(cuda: dict) -> list[str]:
    if "skipped" in cuda:
        return [_row("CUDA", f"not checked ({cuda['skipped']})")]
    if not cuda["available"]:
        return [_row("CUDA", f"not available (torch built for CUDA {cuda['cuda_version'] or 'none'})"
                     + (f": {cuda['error']}" if cuda.get("error") else ""))]
    lines = [_row("CUDA", f"available, CUDA {cuda['cuda_version']}, cuDNN {cuda['cudnn_version']}, "
                          f"{len(cuda['devices'])} device(s)")]
    for d in cuda["devices"]:
        lines.append(_row(f"  cuda:{d['index']}", d["error"] if d.get("error") else
                          f"{d['name']}, compute capability {d['capability']}, "
                          f"{d['total_memory_gib']} GiB ({d['free_memory_gib']} GiB free)"))
        lines.append(_row("  tensor op", f"{_check(d['tensor_check'])}, bf16 {_yes(d.get('bf16_supported'))}"))
    return lines


def _bf16_native(found: list[str] | None) -> str:
    if found:
        return f"native ({', '.join(found)}): --amp bf16 trains faster on this CPU"
    if found is None:
        return "native bf16 instructions: cannot tell on this CPU (time --amp bf16 against off with `bench`)"
    return "emulated (no AVX512_BF16 or AMX): keep --amp off on this CPU, bf16 is slower here"


def _devices(info: dict) -> list[str]:
    cpu, mps, comp = info["cpu"], info["mps"], info["compile"]
    threads = "thread" if cpu["torch_threads"] == 1 else "threads"
    lines = [_row("CPU", f"{cpu['logical_cores']} logical cores, torch uses {cpu['torch_threads']} {threads}"
                  + (f" (OMP_NUM_THREADS={cpu['omp_num_threads']})" if cpu["omp_num_threads"] else "")),
             _row("  tensor op", _check(cpu["tensor_check"])),
             _row("  bf16", _check(cpu["bf16"]) + "; " + _bf16_native(cpu.get("bf16_instructions")))]
    lines += _cuda(info["cuda"])
    if "skipped" in mps:
        lines.append(_row("MPS", f"not checked ({mps['skipped']})"))
    else:
        lines.append(_row("MPS", ("available" if mps["available"] else "not available")
                          + (f", tensor op {_check(mps.get('tensor_check'))}" if mps["available"] else "")))
    lines.append(_row("compile", f"torch.compile: inductor {_yes(comp['inductor'])}, C compiler "
                                 f"{comp['c_compiler'] or 'none'}, triton {comp['triton'] or 'none'}; usable on "
                                 f"CPU: {_yes(comp['usable_cpu'])}, on CUDA: {_yes(comp['usable_cuda'])}"))
    lines += [_row("  note", note) for note in comp["notes"]]
    lines.append(_row("Recommended", f"--device {info['recommended_device']}"))
    return lines


def _cifar_row(name: str, st: dict) -> str:
    if not st["present"]:
        extra = f" (archive {st['archive']} is there)" if st["archive"] else ""
        return _row(f"  {name}", f"absent{extra}  -> resnet-cifar data download --dataset {name}")
    if st["verified"] is None:
        return _row(f"  {name}", f"present at {st['path']} (not verified)")
    if st["verified"]:
        return _row(f"  {name}", f"present at {st['path']}, all batch MD5s verified")
    return _row(f"  {name}", f"BROKEN at {st['path']}: {st['problem']}")


def _data(data: dict) -> list[str]:
    lines = [_row("Data dir", data["data_dir"] + ("" if data["exists"] else " (does not exist)"))]
    if data["exists"]:
        lines += [_cifar_row(name, data[name]) for name in ("cifar10", "cifar100")]
        for f in data["image_folders"]:
            splits = ", ".join(f"{s}: {v['images']} images in {v['classes']} classes" for s, v in f["splits"].items())
            lines.append(_row("  folder", f"{f['path']} ({splits})"
                              + (f"; decode cache {f['cache']}" if f.get("cache") else "")))
        if not data["image_folders"]:
            lines.append(_row("  folder", "no image folders (DIR/train/<class>/*.png|jpg)"))
    lines.append(_row("Decode cache", f"DIR/{data['cache']['folder_cache_dirname']}/ beside each image folder, "
                                      f"or {data['cache']['fallback_cache_dir']} when DIR is read-only"))
    return lines


def format_text(info: dict) -> str:
    """The report as text: a label column, then the value, aligned at one column."""
    return "\n".join(_versions(info) + [""] + _devices(info) + [""] + _data(info["data"]))


def run(args) -> int:
    from ..envinfo import collect

    info = collect(device=args.device, data_dir=args.data_dir, verify=not args.no_verify)
    print(json.dumps(info) if args.json else format_text(info))
    return 0
