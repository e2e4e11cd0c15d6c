"""A damped harmonic oscillator, integrated numerically and checked against its exact solution.

The compute function ``simulate`` takes one grid point and returns a dict, so
``ttg results --format csv`` gives one column per key. It solves

    x'' + 2 zeta omega x' + omega^2 x = 0,    x(0) = 1, x'(0) = 0

with the classic fourth-order Runge-Kutta method, and measures how far the
numerical trajectory strays from the closed-form one: a sweep over
``omega``, ``zeta`` and ``dt`` is a small convergence study.

Parameters (the grid's axis names; ``--space 'grid:omega=...;zeta=...'``):

    omega   natural angular frequency, rad/s, > 0 (required)
    zeta    damping ratio, >= 0 (required): 0 undamped, < 1 underdamped,
            1 critically damped, > 1 overdamped
    dt      time step, s, > 0 (default 0.01)
    t_end   simulated time, s, > 0 (default 20)

A combination the integrator cannot handle (a time step too coarse for the
fastest mode, or too many steps) raises ``ttg.compute.PermanentError``: TTG
records it as that parameter's error, keeps the other results, and never
retries it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ttg.compute import PermanentError

#: Time step when the grid has no ``dt`` axis, s.
DEFAULT_DT = 0.01
#: Simulated time when the grid has no ``t_end`` axis, s.
DEFAULT_T_END = 20.0
#: Largest dt times the fastest decay rate: above it RK4 is inaccurate (and, past ~2.8, unstable).
MAX_STEP_RATIO = 0.5
#: Most integration steps one parameter may take, so no chunk runs for hours.
MAX_STEPS = 1_000_000
#: |x| below this counts as settled (the usual 2 % band).
SETTLE_BAND = 0.02
#: zeta this close to 1 is treated as critical damping (the two roots coincide).
CRITICAL_BAND = 1e-9
#: The axis names ``simulate`` understands.
AXES = ("omega", "zeta", "dt", "t_end")


def simulate(params: Mapping[str, Any]) -> dict[str, Any]:
    """Integrate one oscillator and compare it with the exact solution.

    Args:
        params: one grid point, e.g. ``{"omega": 2.0, "zeta": 0.1, "dt": 0.01}``.

    Returns:
        ``regime`` (undamped, underdamped, critical, overdamped), ``x_end``
        (position at ``t_end``), ``energy_ratio`` (energy left at ``t_end``),
        ``settle_time`` (time after which |x| stays within 2 %; None if it never
        settles within ``t_end``), ``max_error`` (largest deviation from the exact
        solution) and ``steps``.

    Raises:
        PermanentError: the parameters are missing, unknown or out of range, or
            the combination is one the integrator cannot compute accurately.
    """
    if not isinstance(params, Mapping):
        raise PermanentError(f"expected a grid point (a dict of {', '.join(AXES)}), got {params!r}")
    unknown = sorted(set(params) - set(AXES))
    if unknown:
        raise PermanentError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(AXES)}")
    omega = _number(params, "omega", None)
    zeta = _number(params, "zeta", None)
    dt = _number(params, "dt", DEFAULT_DT)
    t_end = _number(params, "t_end", DEFAULT_T_END)
    if omega <= 0 or dt <= 0 or t_end <= 0:
        raise PermanentError("omega, dt and t_end must be > 0")
    if zeta < 0:
        raise PermanentError("zeta must be >= 0 (negative damping grows without bound)")

    rate = fastest_rate(omega, zeta)
    if dt * rate > MAX_STEP_RATIO:
        raise PermanentError(
            f"dt={dt:g} is too coarse for omega={omega:g}, zeta={zeta:g}: the fastest mode "
            f"has rate {rate:.3g}/s, so dt must be <= {MAX_STEP_RATIO / rate:.3g}"
        )
    steps = max(1, round(t_end / dt))
    if steps > MAX_STEPS:
        raise PermanentError(f"t_end/dt = {steps} steps, more than {MAX_STEPS}")
    h = t_end / steps

    x, v = 1.0, 0.0
    max_error = 0.0
    last_outside = 0.0
    for k in range(1, steps + 1):
        x, v = _rk4_step(x, v, h, omega, zeta)
        t = k * h
        max_error = max(max_error, abs(x - exact_position(omega, zeta, t)))
        if abs(x) > SETTLE_BAND:
            last_outside = t
    settled = abs(x) <= SETTLE_BAND
    energy = 0.5 * v * v + 0.5 * omega * omega * x * x
    return {
        "regime": regime(zeta),
        "x_end": x,
        "energy_ratio": energy / (0.5 * omega * omega),
        "settle_time": last_outside if settled else None,
        "max_error": max_error,
        "steps": steps,
    }


def regime(zeta: float) -> str:
    """The name of the damping regime of ``zeta``."""
    if zeta == 0:
        return "undamped"
    if abs(zeta - 1.0) <= CRITICAL_BAND:
        return "critical"
    return "underdamped" if zeta < 1.0 else "overdamped"


def fastest_rate(omega: float, zeta: float) -> float:
    """The largest magnitude of the characteristic roots, 1/s: what limits the time step."""
    if zeta <= 1.0:
        return omega
    return omega * (zeta + math.sqrt(zeta * zeta - 1.0))


def exact_position(omega: float, zeta: float, t: float) -> float:
    """The closed-form x(t) for x(0) = 1, x'(0) = 0."""
    if abs(zeta - 1.0) <= CRITICAL_BAND:
        # Critical damping: the two characteristic roots coincide.
        return (1.0 + omega * t) * math.exp(-omega * t)
    if zeta < 1.0:
        wd = omega * math.sqrt(1.0 - zeta * zeta)
        return math.exp(-zeta * omega * t) * (
            math.cos(wd * t) + zeta * omega / wd * math.sin(wd * t)
        )
    s = omega * math.sqrt(zeta * zeta - 1.0)
    r1, r2 = -zeta * omega + s, -zeta * omega - s
    return (r2 * math.exp(r1 * t) - r1 * math.exp(r2 * t)) / (r2 - r1)


def _rk4_step(x: float, v: float, h: float, omega: float, zeta: float) -> tuple[float, float]:
    def accel(x: float, v: float) -> float:
        return -2.0 * zeta * omega * v - omega * omega * x

    k1x, k1v = v, accel(x, v)
    k2x, k2v = v + 0.5 * h * k1v, accel(x + 0.5 * h * k1x, v + 0.5 * h * k1v)
    k3x, k3v = v + 0.5 * h * k2v, accel(x + 0.5 * h * k2x, v + 0.5 * h * k2v)
    k4x, k4v = v + h * k3v, accel(x + h * k3x, v + h * k3v)
    return (
        x + h / 6.0 * (k1x + 2.0 * k2x + 2.0 * k3x + k4x),
        v + h / 6.0 * (k1v + 2.0 * k2v + 2.0 * k3v + k4v),
    )


def _number(params: Mapping[str, Any], name: str, default: float | None) -> float:
    """``params[name]`` as a float; a missing required one or a non-number is permanent."""
    if name not in params:
        if default is None:
            raise PermanentError(f"missing parameter {name!r} (a grid axis)")
        return default
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PermanentError(f"parameter {name}={value!r} is not a number")
    if not math.isfinite(value):
        raise PermanentError(f"parameter {name}={value!r} is not finite")
    return float(value)
