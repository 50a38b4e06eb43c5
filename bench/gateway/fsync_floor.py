#!/usr/bin/env python3
"""The durability floor of the gateway bench: what one fdatasync costs on the disk under gavel's
data folder at a given request rate, with nothing else of gavel running.

Every decision gavel answers waits for its ledger record to be durable, so at low rates each
request waits for (at least) one fdatasync of the SQLite WAL. This probe does what that commit
does to the disk, and nothing more: a 32 MiB file preallocated with zeros (as gavel preallocates
its WAL, in 64 KiB writes), then at the given rate one WAL-frame-shaped write pair (a 24-byte
frame header and a 4 KiB page, as SQLite writes a frame) and an fdatasync, timed. The file is
removed afterwards.

    fsync_floor.py DIR RATE SAMPLES    ->  one JSON line: rate, samples, p50_ms, p99_ms, max_ms
"""
import json
import os
import sys
import time


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: fsync_floor.py DIR RATE SAMPLES")
    folder, rate, samples = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    if rate <= 0 or samples <= 0:
        sys.exit("fsync_floor.py: RATE and SAMPLES must be positive")
    path = os.path.join(folder, ".fsync-floor-probe")
    size = 32 << 20
    frame = 24 + 4096
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        zeros = b"\0" * (64 << 10)
        for _ in range(size // len(zeros)):
            os.write(fd, zeros)
        os.fsync(fd)
        page = os.urandom(frame)
        took = []
        offset = 32  # after a WAL header's worth of bytes
        gap = 1.0 / rate
        due = time.perf_counter()
        for _ in range(samples):
            due += gap
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            os.pwrite(fd, page[:24], offset)
            os.pwrite(fd, page[24:], offset + 24)
            start = time.perf_counter()
            os.fdatasync(fd)
            took.append((time.perf_counter() - start) * 1e3)
            offset = (offset + frame) % (size - frame)
    finally:
        os.close(fd)
        os.unlink(path)
    took.sort()

    def quantile(q):
        return took[min(len(took) - 1, int(q * len(took)))]

    print(json.dumps({"rate": rate, "samples": samples, "p50_ms": quantile(0.5),
                      "p99_ms": quantile(0.99), "max_ms": took[-1]}))


if __name__ == "__main__":
    main()
