#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/): a few tiny valid files
and a few broken ones. Standard library only; run from anywhere, then commit the files."""
import json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))

def safetensors(tensors, metadata=None, pad=True):
    """tensors: [(name, dtype, shape, raw bytes)] laid out in the given order."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data

def npy(descr, shape, raw, version=1, fortran=False):
    d = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, repr(tuple(shape)))
    size_len = 2 if version == 1 else 4
    text = d.encode() + b" " * (-(10 + (size_len - 2) + len(d) + 1) % 64) + b"\n"
    fmt = "<H" if version == 1 else "<I"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(fmt, len(text)) + text + raw

f32 = lambda *v: struct.pack(f"<{len(v)}f", *v)
f16 = lambda *v: struct.pack(f"<{len(v)}e", *v)
bf16 = lambda *v: b"".join(struct.pack("<f", x)[2:] for x in v)

st = {
    "valid_f32_2x3": safetensors([("w", "F32", [2, 3], f32(1, 2, 3, 4, 5, 6))]),
    "valid_mixed": safetensors(
        [("a", "F32", [2], f32(1.0, -2.5)), ("b", "BF16", [1, 2], bf16(65504.0, -0.0)),
         ("c", "F16", [2, 1, 2], f16(1.0, -2.5, 65504.0, 2.0**-24)), ("n", "I64", [1], b"\1" * 8)],
        metadata={"format": "pt"}),
    "valid_scalar_and_empty": safetensors([("s", "F64", [], struct.pack("<d", 3.5)),
                                           ("e", "F32", [0, 4], b"")]),
    "valid_unpadded_misaligned": safetensors([("h", "F16", [1], f16(1.0)),
                                              ("w", "F32", [2], f32(7, 8))], pad=False),
    "valid_unicode_names": safetensors([("caf\u00e9.\U0001F600", "F32", [1], f32(1))],
                                       metadata={"k\"ey": "v\\al\u0001"}),
}
good = st["valid_f32_2x3"]
st.update({
    "bad_truncated_data": good[:-3],
    "bad_header_length_past_end": struct.pack("<Q", 1 << 40) + good[8:],
    "bad_json": struct.pack("<Q", 16) + b'{"w":{"dtype":,}' + f32(1),
    "bad_unknown_dtype": safetensors([("w", "F31", [1], f32(1))]),
    "bad_shape_offsets_disagree": safetensors([("w", "F32", [3, 3], f32(1, 2, 3, 4, 5, 6))]),
    "bad_overlap": struct.pack("<Q", 96) + json.dumps(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
        separators=(",", ":")).encode().ljust(96) + f32(1, 2, 3),
    "bad_deep_nesting": struct.pack("<Q", 200) + b"[" * 100 + b"]" * 100,
    "bad_duplicate_key": struct.pack("<Q", 16) + b'{"a":{},"a":{}} ',
})
np_files = {
    "valid_f4_2x3": npy("<f4", (2, 3), f32(1, 2, 3, 4, 5, 6)),
    "valid_f8_1d_v2": npy("<f8", (2,), struct.pack("<2d", 0.5, -1.0), version=2),
    "valid_f2_scalar_v3": npy("<f2", (), f16(65504.0), version=3),
    "valid_empty": npy("<f4", (0, 5), b""),
    "bad_fortran": npy("<f4", (2, 1), f32(1, 2), fortran=True),
    "bad_descr": npy(">i8", (1,), b"\0" * 8),
    "bad_truncated": npy("<f8", (4, 4), b"\0" * 20),
    "bad_magic": b"\x93NUMPZ" + npy("<f4", (1,), f32(1))[6:],
}

for target, files in (("safetensors", st), ("npy", np_files)):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    for name, content in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content)
