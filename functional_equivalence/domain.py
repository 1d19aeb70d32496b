"""The input domain on which an extracted network is claimed equal to the victim: a ball or a box.

  Ball(radius)      {x : |x| <= radius}            (default: radius 1000 * --fe_scale, flag --fe_radius)
  Box(low, high)    {x : low <= x_j <= high}        (flag --fe_box=LOW,HIGH, e.g. images in [0, 1])

The attack searches lines that cross the domain's hyperplanes (`line_length`), checks the recovered network on
points that cover the domain (`check_points`, `hyperplane_points`), and the certificate (certify.py) bounds the
logit difference on it with `max_affine`, the exact maximum of an affine function over the domain. Everything is
float64 numpy; the domain is the same in every dimension d (a box has scalar bounds).
"""
from __future__ import annotations

import dataclasses
from typing import Union

import numpy as np


@dataclasses.dataclass(frozen=True)
class Ball:
  """{x in R^d : |x| <= radius}."""
  radius: float

  def __post_init__(self):
    if not (np.isfinite(self.radius) and self.radius > 0):
      raise ValueError(f"the domain's radius must be a positive number, got {self.radius}")

  def center(self, d: int) -> np.ndarray:
    return np.zeros(d)

  def circumradius(self, d: int) -> float:
    """Largest distance from the center to a point of the domain."""
    return float(self.radius)

  def max_affine(self, a: np.ndarray, b) -> np.ndarray:
    """Exact max over the domain of a . x + b, for rows a (..., d) and offsets b (...)."""
    return np.asarray(b) + self.radius * np.linalg.norm(a, axis=-1)

  def contains(self, x: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    return np.linalg.norm(x, axis=-1) <= self.radius * (1 + rtol)

  def project(self, x: np.ndarray) -> np.ndarray:
    """The nearest points of the domain to x (N, d)."""
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x * np.minimum(1.0, self.radius / np.maximum(n, 1e-300))

  def check_points(self, rng: np.random.Generator, d: int, count: int) -> np.ndarray:
    """`count` points on spheres of radii R * 10^-3 .. R (five radii, geometric), the radius-R one twice as full."""
    radii = self.radius * np.array([1e-3, 1e-2, 1e-1, 0.3, 1.0, 1.0])
    x = rng.normal(size=(count, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * radii[np.arange(count) % len(radii), None]

  def hyperplane_points(self, u: np.ndarray, beta: np.ndarray, rng: np.random.Generator, per_unit: int):
    """Points of each hyperplane u_i . x + beta_i = 0 (|u_i| = 1) inside the domain: the nearest point to the
    center and per_unit - 1 random ones. Returns (points (M, d), unit index (M,)); units whose hyperplane misses
    the domain give none."""
    inside = np.flatnonzero(np.abs(beta) < self.radius)
    if len(inside) == 0:
      return np.zeros((0, u.shape[1])), np.zeros(0, int)
    which = np.repeat(inside, per_unit)
    ui, bi = u[which], beta[which]
    x0 = -bi[:, None] * ui
    w = rng.normal(size=ui.shape)
    w -= np.sum(w * ui, 1, keepdims=True) * ui
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    r = np.sqrt(np.maximum(self.radius ** 2 - bi ** 2, 0)) * rng.uniform(size=len(which)) ** (1.0 / 4)
    r[::per_unit] = 0.0
    return x0 + r[:, None] * w, which

  def describe(self) -> dict:
    return {"kind": "ball", "radius": float(self.radius), "center": 0.0}


@dataclasses.dataclass(frozen=True)
class Box:
  """{x in R^d : low <= x_j <= high for every j}."""
  low: float
  high: float

  def __post_init__(self):
    if not (np.isfinite(self.low) and np.isfinite(self.high) and self.low < self.high):
      raise ValueError(f"the domain's box needs finite LOW < HIGH, got {self.low}, {self.high}")

  def center(self, d: int) -> np.ndarray:
    return np.full(d, 0.5 * (self.low + self.high))

  def circumradius(self, d: int) -> float:
    return 0.5 * (self.high - self.low) * np.sqrt(d)

  def max_affine(self, a: np.ndarray, b) -> np.ndarray:
    return np.asarray(b) + np.sum(np.maximum(a * self.low, a * self.high), axis=-1)

  def contains(self, x: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    slack = rtol * max(abs(self.low), abs(self.high), self.high - self.low)
    return np.all((x >= self.low - slack) & (x <= self.high + slack), axis=-1)

  def project(self, x: np.ndarray) -> np.ndarray:
    return np.clip(x, self.low, self.high)

  def check_points(self, rng: np.random.Generator, d: int, count: int) -> np.ndarray:
    """`count` points: a third uniform inside, a third at random vertices, a third on random faces."""
    x = rng.uniform(self.low, self.high, size=(count, d))
    vertex = np.arange(count) % 3 == 1
    x[vertex] = np.where(rng.uniform(size=(int(vertex.sum()), d)) < 0.5, self.low, self.high)
    face = np.flatnonzero(np.arange(count) % 3 == 2)
    coords = rng.integers(0, d, size=len(face))
    x[face, coords] = np.where(rng.uniform(size=len(face)) < 0.5, self.low, self.high)
    return x

  def hyperplane_points(self, u: np.ndarray, beta: np.ndarray, rng: np.random.Generator, per_unit: int):
    """Points of each hyperplane inside the box: where it crosses the segment between the box's vertices of least
    and largest u . x (inside the box whenever the hyperplane meets it, even at a corner), then projections of
    random box points onto it that fall inside (at most per_unit per unit; a hyperplane missing the box gives
    none)."""
    n, d = u.shape
    if n == 0:
      return np.zeros((0, d)), np.zeros(0, int)
    lo_v, hi_v = np.where(u > 0, self.low, self.high), np.where(u > 0, self.high, self.low)
    z_lo, z_hi = np.sum(u * lo_v, 1) + beta, np.sum(u * hi_v, 1) + beta
    with np.errstate(divide="ignore", invalid="ignore"):
      cross = lo_v + (-z_lo / (z_hi - z_lo))[:, None] * (hi_v - lo_v)
    y = rng.uniform(self.low, self.high, size=(n, 4 * per_unit, d))
    x = y - (np.einsum("nkd,nd->nk", y, u) + beta[:, None])[..., None] * u[:, None]
    x = np.concatenate([cross[:, None], x], axis=1)
    good = self.contains(x) & ((z_lo < 0) & (z_hi > 0))[:, None]
    pts, which = [], []
    for i in range(n):
      sel = np.flatnonzero(good[i])[:per_unit]
      pts.append(x[i, sel])
      which.append(np.full(len(sel), i))
    return np.concatenate(pts), np.concatenate(which)

  def describe(self) -> dict:
    return {"kind": "box", "low": float(self.low), "high": float(self.high)}


Domain = Union[Ball, Box]


def parse(radius: float | None, box: list | None, scale: float) -> Domain:
  """The domain of --fe_radius / --fe_box (a box wins; no radius: 1000 * scale). Raises ValueError."""
  if box:
    if len(box) != 2:
      raise ValueError(f"--fe_box needs LOW,HIGH, got {','.join(map(str, box))}")
    try:
      low, high = (float(v) for v in box)
    except ValueError:
      raise ValueError(f"--fe_box needs two numbers LOW,HIGH, got {','.join(map(str, box))}") from None
    return Box(low, high)
  return Ball(1000.0 * scale if radius is None else float(radius))


def max_abs_affine(dom: Domain, a: np.ndarray, b) -> np.ndarray:
  """Exact max over the domain of |a . x + b| (rows a (..., d))."""
  return np.maximum(dom.max_affine(a, b), dom.max_affine(-a, -np.asarray(b)))
