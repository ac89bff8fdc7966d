"""Numbers about sensor series, computed by edged (not by the model), and which series a question concerns."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from difflib import get_close_matches

from edged.diagnostics.telemetry import Series

Z_FLAG = 3.0
MIN_TREND_SPAN_S = 1.0  # readings closer together than this say nothing about a trend


@dataclass(frozen=True)
class Summary:
    key: str
    unit: str | None
    n: int
    last: float | None
    age_s: float | None
    min: float | None
    max: float | None
    mean: float | None
    stdev: float | None
    slope_per_min: float | None
    z_last: float | None  # the last value against the rest of the window
    stale: bool
    out_of_range: bool
    normal: tuple[float | None, float | None]

    @property
    def abnormal(self) -> bool:
        return self.stale or self.out_of_range or (self.z_last is not None and abs(self.z_last) >= Z_FLAG)

    def line(self) -> str:
        """One compact line for the prompt."""
        if self.last is None:
            return f"{self.key}: no readings in the window (data gap)"
        unit = f" {self.unit}" if self.unit else ""
        parts = [
            f"{self.key}: last {_n(self.last)}{unit} ({_n(self.age_s)} s ago)",
            f"min {_n(self.min)} max {_n(self.max)} mean {_n(self.mean)} sd {_n(self.stdev)} over {self.n}",
        ]
        if self.slope_per_min is not None:
            parts.append(f"trend {self.slope_per_min:+.3g}/min")
        if self.z_last is not None:
            parts.append(f"z {self.z_last:+.1f}")
        lo, hi = self.normal
        if lo is not None and hi is not None:
            parts.append(f"normal {_n(lo)}..{_n(hi)}")
        elif lo is not None or hi is not None:
            parts.append(f"normal {'>= ' + _n(lo) if lo is not None else '<= ' + _n(hi)}")
        flags = [
            f
            for f, on in (
                ("OUT OF RANGE", self.out_of_range),
                ("STALE", self.stale),
                ("UNUSUAL", self.z_last is not None and abs(self.z_last) >= Z_FLAG),
            )
            if on
        ]
        return "; ".join(parts) + (f" [{', '.join(flags)}]" if flags else "")


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def citable(summary: Summary) -> list[float]:
    """The numbers ``summary.line()`` shows, as shown (the unit's digits aside): what a finding may cite."""
    shown = summary.line().split(": ", 1)[1]
    if summary.unit:
        shown = shown.replace(summary.unit, "")
    return list(dict.fromkeys(float(x) for x in _NUMBER.findall(shown)))


def _n(x: float | None) -> str:
    return "?" if x is None else f"{x:.4g}"


def slope_per_minute(samples: Iterable[tuple[float, float]]) -> float | None:
    """Least-squares slope of value over time, per minute."""
    pts = list(samples)
    if len(pts) < 2 or pts[-1][0] - pts[0][0] < MIN_TREND_SPAN_S:
        return None
    t0 = pts[0][0]
    xs, ys = [(t - t0) / 60 for t, _ in pts], [v for _, v in pts]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return None if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var


def summarise(series: Series, now: float) -> Summary:
    spec, values = series.spec, [v for _, v in series.samples]
    normal = (spec.normal_min, spec.normal_max)
    if not values:
        return Summary(series.key, spec.unit, 0, None, None, None, None, None, None, None, None, True, False, normal)
    last, age = values[-1], now - series.samples[-1][0]
    earlier = values[:-1]
    z = None
    if len(earlier) >= 3:
        sd = statistics.pstdev(earlier)
        z = (
            (last - statistics.fmean(earlier)) / sd
            if sd > 0
            else (0.0 if last == earlier[-1] else math.copysign(99.0, last - earlier[-1]))
        )
    out = (spec.normal_min is not None and last < spec.normal_min) or (
        spec.normal_max is not None and last > spec.normal_max
    )
    return Summary(
        key=series.key,
        unit=spec.unit,
        n=len(values),
        last=last,
        age_s=round(age, 1),
        min=min(values),
        max=max(values),
        mean=statistics.fmean(values),
        stdev=statistics.pstdev(values) if len(values) > 1 else 0.0,
        slope_per_min=slope_per_minute(series.samples),
        z_last=z,
        stale=age > spec.stale_s,
        out_of_range=out,
        normal=normal,
    )


_WORD = re.compile(r"[a-z]+|[0-9]+")  # "pump3" is "pump 3"
FUZZY_MIN_LEN, FUZZY_CUTOFF = 5, 0.85  # "heatr" finds "heater"; "train" does not find "drain"


def subject(series: Series) -> str:
    """The device a series belongs to: declared, else its key without the last level (``pump_3``)."""
    return series.spec.device or series.key.rsplit("/", 1)[0]


def words_of(text: str) -> set[str]:
    found = set(_WORD.findall(text.lower()))
    return found | {w[:-1] for w in found if len(w) > 3 and w.endswith("s")}  # "pumps 2 and 3"


def said(phrase: str, words: set[str]) -> bool:
    """Every word of ``phrase`` is among ``words``; a long word may carry a typo."""
    wanted = set(_WORD.findall(phrase.lower()))
    return bool(wanted) and all(
        w in words or (len(w) >= FUZZY_MIN_LEN and get_close_matches(w, words, n=1, cutoff=FUZZY_CUTOFF))
        for w in wanted
    )


def relevant(
    summaries: list[Summary],
    series: list[Series],
    text: str,
    context: Mapping[str, object] | None,
    *,
    limit: int,
    names: Mapping[str, Sequence[str]] | None = None,
) -> list[Summary]:
    """Sensors the question is about: named in ``context.sensors``, or whose device the text names by
    id (``pump 3`` finds ``pump_3/vibration``) or by any of ``names`` (the registry's names, aliases and
    the device's area); else the abnormal ones. Abnormal first, at most ``limit``."""
    named = context.get("sensors") if context else None
    wanted = {s for s in named if isinstance(s, str)} if isinstance(named, (list, tuple)) else set()
    words = words_of(text)
    by_key = {s.key: s for s in series}
    names = names or {}

    def mentioned(summary: Summary) -> bool:
        sr = by_key[summary.key]
        device = subject(sr)
        return (
            summary.key in wanted or sr.topic in wanted or any(said(p, words) for p in (device, *names.get(device, ())))
        )

    chosen = [s for s in summaries if mentioned(s)]
    if not chosen:
        chosen = [s for s in summaries if s.abnormal]
    return sorted(chosen, key=lambda s: (not s.abnormal, s.key))[:limit]
