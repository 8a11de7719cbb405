"""Benchmark: what the readings contract's JSON costs per reading, against msgpack, on one core.

    .venv/bin/python bench/bench_codec.py [--readings 200000]

Issue #17 lists a binary encoding (msgpack through msgspec, negotiated by a header) as a
candidate to measure before building. This measures it: the CPU per reading of each step the
pipeline does with a reading's bytes, JSON (what the contract fixes) against msgpack, with the
same msgspec structs:

- the bridge encodes each reading once;
- the processor decodes a batch (its fast path joins the values and decodes them as lines);
- the sink decodes each reading.

The baseline is JSON, measured in the same run; the last line sets the saving beside the
pipeline's measured CPU per reading (bench_pipeline.py) so it reads as a share of the whole.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import msgspec

from thermoflow.events import Reading

PIPELINE_US_PER_READING = 54.2  # bench_pipeline.py --rates 20000, this session's first run


def readings(count: int) -> list[Reading]:
    rng = random.Random(7)
    return [
        Reading(device_id=f"freezer-{rng.randrange(10_000):04d}", value=round(rng.uniform(-25, 5), 2),
                ts=1_764_218_400.0 + i / 1000, seq=i, received_at=1_764_218_400.0 + i / 1000 + 0.004)
        for i in range(count)
    ]  # fmt: skip


def cpu_us_per(count: int, step: Callable[[], object], trials: int = 3) -> float:
    """The best of ``trials`` runs of ``step``, in µs of process CPU per reading."""
    best = float("inf")
    for _ in range(trials):
        started = time.process_time()
        step()
        best = min(best, time.process_time() - started)
    return 1e6 * best / count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=200_000)
    count = parser.parse_args().readings
    sample = readings(count)
    json_enc, pack_enc = msgspec.json.Encoder(), msgspec.msgpack.Encoder()
    json_dec, pack_dec = msgspec.json.Decoder(Reading), msgspec.msgpack.Decoder(Reading)
    json_values = [json_enc.encode(r) for r in sample]
    pack_values = [pack_enc.encode(r) for r in sample]
    lines_dec = msgspec.json.Decoder(Reading)
    array_dec = msgspec.msgpack.Decoder(list[Reading])

    steps = {
        "bridge: encode": (
            lambda: [json_enc.encode(r) for r in sample],
            lambda: [pack_enc.encode(r) for r in sample],
        ),
        "processor: decode a batch": (
            lambda: lines_dec.decode_lines(b"\n".join(json_values)),
            # msgpack has no lines: an array header before the concatenated values
            lambda: array_dec.decode(b"\xdd" + len(pack_values).to_bytes(4, "big") + b"".join(pack_values)),
        ),
        "sink: decode each": (
            lambda: [json_dec.decode(v) for v in json_values],
            lambda: [pack_dec.decode(v) for v in pack_values],
        ),
    }
    size_json = sum(map(len, json_values)) / count
    size_pack = sum(map(len, pack_values)) / count
    print(f"{count:,} readings; bytes per value: JSON {size_json:.0f}, msgpack {size_pack:.0f}")
    saved = 0.0
    for name, (as_json, as_pack) in steps.items():
        json_us, pack_us = cpu_us_per(count, as_json), cpu_us_per(count, as_pack)
        saved += json_us - pack_us
        print(
            f"{name:28} JSON {json_us:6.3f} µs/reading  msgpack {pack_us:6.3f}  ratio {pack_us / json_us:.2f}"
        )
    share = 100 * saved / PIPELINE_US_PER_READING
    print(f"msgpack would save {saved:.2f} µs of CPU per reading over the pipeline's hops:"
          f" {share:.1f}% of its {PIPELINE_US_PER_READING} µs per reading")  # fmt: skip


if __name__ == "__main__":
    main()
