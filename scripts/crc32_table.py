"""Prints the slice-by-8 tables of includes/tc_crc32.h (zlib's crc32: reflected, 0xEDB88320).

    python scripts/crc32_table.py    # the block between the markers in tc_crc32.h

tests/test_partial_reader.py checks that the header holds exactly this output.
"""

from __future__ import annotations

POLY = 0xEDB88320


def tables() -> list[list[int]]:
    t0 = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (POLY if c & 1 else 0)
        t0.append(c)
    out = [t0]
    for _ in range(7):
        prev = out[-1]
        out.append([(v >> 8) ^ t0[v & 0xFF] for v in prev])
    return out


def c_block() -> str:
    lines = ["static const uint32_t tc_crc32_table[8][256] = {"]
    for t in tables():
        lines.append("    {")
        for row in range(0, 256, 6):
            lines.append("        " + " ".join(f"0x{v:08x}u," for v in t[row:row + 6]))
        lines.append("    },")
    lines.append("};")
    return "\n".join(lines)


if __name__ == "__main__":
    print(c_block())
