"""One evaluation of a function, two destinations for its gradients, chosen per output field.

The objective renders the rigged splats once. The photometric terms read the colour and should
train everything upstream: the predictor's mesh and camera as well as the Gaussians. The
geometry terms read the depth, normal and distortion buffers and compare them with the mesh's
own z-buffer (a constant), so through the mesh they would only teach the predictor to chase its
own stale copy (moving the camera shifts every splat but not the constant target). They should
train the Gaussians relative to the mesh. `route_gradients` evaluates `fn` once and sends the
cotangents of the named fields to a second copy of the inputs, built with the mesh detached.
"""
import dataclasses
import functools
from typing import Callable, Sequence, Tuple

import jax
import jax.numpy as jnp


def _zeroed(cotangent, fields: Sequence[str]):
  """`cotangent` (a flax struct) with the named float fields set to zero."""
  return cotangent.replace(**{name: jnp.zeros_like(getattr(cotangent, name)) for name in fields})


def _float_fields(cotangent) -> Tuple[str, ...]:
  """Fields with a real cotangent (integer outputs have float0 ones, nothing to route)."""
  return tuple(field.name for field in dataclasses.fields(cotangent)
               if jnp.issubdtype(jnp.asarray(getattr(cotangent, field.name)).dtype,
                                 jnp.floating))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def route_gradients(fn: Callable, routed_fields: Tuple[str, ...], primary_args: tuple,
                    secondary_args: tuple):
  """fn(*primary_args), a flax struct; the cotangents of `routed_fields` flow to
  `secondary_args` and those of every other field to `primary_args`.

  Both argument tuples must hold the same values (they differ only in what they are
  differentiable with respect to); the function is evaluated and linearised once, at
  `primary_args`, and its backward runs once per destination.
  """
  del routed_fields, secondary_args
  return fn(*primary_args)


def _route_fwd(fn, routed_fields, primary_args, secondary_args):
  del routed_fields, secondary_args
  out, pullback = jax.vjp(fn, *primary_args)
  return out, pullback


def _route_bwd(fn, routed_fields, pullback, cotangent):
  del fn
  other_fields = tuple(f for f in _float_fields(cotangent) if f not in routed_fields)
  return pullback(_zeroed(cotangent, routed_fields)), pullback(_zeroed(cotangent, other_fields))


route_gradients.defvjp(_route_fwd, _route_bwd)
