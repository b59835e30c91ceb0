"""The Engine in a notebook: replay a recorded stream, look at the aggregates, plot them.

Run it as a script (`python examples/notebook_guide.py out.png`) or paste the cells into Jupyter;
docs/notebook.md walks through it. Plotting needs the optional extra:
pip install 'telemetry-cy[plot]'.
"""

# %% 1. A recorded stream: (arrival ts, payload) pairs, as a gateway log or a capture would give.
# Here the simulated fleet records 10 minutes of 4 sensors on 3 devices, 5 messages a second.
from telemetry_cy.tools.fleet_sim import Fleet

fleet = Fleet(devices=3, seed=42, malformed_share=0.002)
t0 = 1_700_000_000.0
recording = [(t0 + i / 5, payload) for i in range(10 * 60 * 5)
             for payload in fleet.payloads(t0 + i / 5, 1)]
print(f"{len(recording)} payloads recorded")

# %% 2. Replay it through the engine: 60 s windows every 5 s, the daemon's defaults.
from telemetry_cy import Engine

eng = Engine(window=60.0, emit_every=5.0)
aggregates = []
for ts, payload in recording:
    eng.push(payload, ts)
    aggregates += eng.tick(ts)          # cheap when no tick is due
aggregates += eng.tick(recording[-1][0] + 60.0)   # close the last windows
stats = eng.stats()
print(f"{stats['readings']} readings, {len(aggregates)} aggregates, drops: "
      + ", ".join(f"{k}={v}" for k, v in stats["drops"].items() if v))

# %% 3. Aggregates are plain objects; as_dict() feeds pandas or anything else.
temp = [a for a in aggregates if a.device == "dev-00000" and a.sensor == "temp"]
for a in temp[:3]:
    print(a.as_dict())

# %% 4. Plot the mean with a band of one standard deviation, and the min/max envelope.
if __name__ == "__main__":
    import sys

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ends = [a.window_end - t0 for a in temp]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.fill_between(ends, [a.min for a in temp], [a.max for a in temp], alpha=0.15,
                    label="min..max")
    ax.fill_between(ends, [a.mean - a.stddev for a in temp], [a.mean + a.stddev for a in temp],
                    alpha=0.35, label="mean ± stddev")
    ax.plot(ends, [a.mean for a in temp], label="mean (60 s window)")
    ax.set_xlabel("seconds since the start of the recording (window end)")
    ax.set_ylabel(f"temp [{temp[0].unit}]")
    ax.set_title("dev-00000 / temp: 60 s windows emitted every 5 s")
    ax.legend(loc="upper right")
    fig.tight_layout()
    out = sys.argv[1] if len(sys.argv) > 1 else "aggregates.png"
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
