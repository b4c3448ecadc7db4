"""`resnet-cifar env [--json] [--device auto|cpu|cuda|mps] [--data-dir data] [--no-verify]`."""

from __future__ import annotations

import json


def add_parser(subparsers):
    p = subparsers.add_parser(
        "env", help="versions, accelerators, bf16, torch.compile and datasets on this machine",
        description="Check the environment: Python/torch versions, CPU threads, CUDA/MPS with a real "
                    "tensor operation on each, bf16 and torch.compile support, and the datasets "
                    "present (and MD5-verified) under --data-dir.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
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


def format_text(info: dict) -> str:
    lines = [
        f"resnet-cifar {info['resnet_cifar']}",
        f"Python       {info['python']} ({info['python_executable']})",
        f"Platform     {info['platform']}",
        f"torch        {info['torch']}",
        f"torchvision  {info['torchvision'] or 'not installed (only needed by `bench`)'}",
        f"onnx export  onnx {info['onnx'] or 'missing'}, onnxruntime {info['onnxruntime'] or 'missing'}"
        + ("" if info["onnx"] and info["onnxruntime"] else "  (pip install 'resnet-cifar[onnx]')"),
        "",
        f"CPU          {info['cpu']['logical_cores']} logical cores, torch uses "
        f"{info['cpu']['torch_threads']} threads"
        + (f" (OMP_NUM_THREADS={info['cpu']['omp_num_threads']})" if info['cpu']['omp_num_threads'] else ""),
        f"  tensor op  {_check(info['cpu']['tensor_check'])}",
        f"  bf16       {_check(info['cpu']['bf16'])}",
    ]
    cuda = info["cuda"]
    if "skipped" in cuda:
        lines.append(f"CUDA         not checked ({cuda['skipped']})")
    elif not cuda["available"]:
        lines.append(f"CUDA         not available (torch built for CUDA {cuda['cuda_version'] or 'none'})"
                     + (f": {cuda['error']}" if cuda.get("error") else ""))
    else:
        lines.append(f"CUDA         available, CUDA {cuda['cuda_version']}, cuDNN {cuda['cudnn_version']}, "
                     f"{len(cuda['devices'])} device(s)")
        for d in cuda["devices"]:
            if d.get("error"):
                lines.append(f"  cuda:{d['index']}     {d['error']}")
            else:
                lines.append(f"  cuda:{d['index']}     {d['name']}, compute capability {d['capability']}, "
                             f"{d['total_memory_gib']} GiB ({d['free_memory_gib']} GiB free)")
            lines.append(f"    tensor op {_check(d['tensor_check'])}")
            lines.append(f"    bf16      {_yes(d.get('bf16_supported'))}")
    mps = info["mps"]
    if "skipped" in mps:
        lines.append(f"MPS          not checked ({mps['skipped']})")
    else:
        lines.append(f"MPS          {'available' if mps['available'] else 'not available'}"
                     + (f", tensor op {_check(mps.get('tensor_check'))}" if mps["available"] else ""))
    comp = info["compile"]
    lines.append(f"torch.compile  inductor {_yes(comp['inductor'])}, C compiler {comp['c_compiler'] or 'none'}, "
                 f"triton {comp['triton'] or 'none'}; usable on CPU: {_yes(comp['usable_cpu'])}, "
                 f"on CUDA: {_yes(comp['usable_cuda'])}")
    for note in comp["notes"]:
        lines.append(f"  note: {note}")
    lines.append(f"Recommended  --device {info['recommended_device']}")

    data = info["data"]
    lines += ["", f"Data dir     {data['data_dir']}" + ("" if data["exists"] else " (does not exist)")]
    if data["exists"]:
        for name in ("cifar10", "cifar100"):
            st = data[name]
            if not st["present"]:
                extra = f" (archive {st['archive']} is there)" if st["archive"] else ""
                lines.append(f"  {name:<9}  absent{extra}  -> resnet-cifar data download --dataset {name}")
            elif st["verified"] is None:
                lines.append(f"  {name:<9}  present at {st['path']} (not verified)")
            elif st["verified"]:
                lines.append(f"  {name:<9}  present at {st['path']}, all batch MD5s verified")
            else:
                lines.append(f"  {name:<9}  BROKEN at {st['path']}: {st['problem']}")
        for f in data["image_folders"]:
            splits = ", ".join(f"{s}: {v['images']} images in {v['classes']} classes"
                               for s, v in f["splits"].items())
            lines.append(f"  folder     {f['path']} ({splits})"
                         + (f"; decode cache {f['cache']}" if f.get("cache") else ""))
        if not data["image_folders"]:
            lines.append("  folder     no image folders (DIR/train/<class>/*.png|jpg)")
    lines.append(f"Decode cache  DIR/{data['cache']['folder_cache_dirname']}/ beside each image folder, "
                 f"or {data['cache']['fallback_cache_dir']} when DIR is read-only")
    return "\n".join(lines)


def run(args) -> int:
    from ..envinfo import collect

    info = collect(device=args.device, data_dir=args.data_dir, verify=not args.no_verify)
    print(json.dumps(info) if args.json else format_text(info))
    return 0
