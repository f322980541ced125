"""DCGMM spec strings and the papers' named architectures.

A spec is a ``-``-separated list of layers, in either notation of the papers::

    F(8,2)-G(25)-F(11,1)-G(36)          # F(f,s): square patches;  P(k,s): square windows
    F(8,8,2,2)-G(25)-F(11,11,1,1)-G(36) # F(fy,fx,sy,sx), P(ky,kx,sy,sx)
    F(12,5)-G(64,independent)-...       # G(K) shares parameters over positions, or not
    ...-G(49)-C(10)                     # linear classifier on the layer below
    ...-G(49)-C(10,2)                   # ... on the two highest GMM layers (concatenated)

or the name of an architecture from :data:`ARCHITECTURES` (``A``..``G``, ``1L``, ``2L-a``..``2L-e``,
``3L-a``, ``3L-b``, ``SVHN``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SpecError

__all__ = ["LayerSpec", "ARCHITECTURES", "ARCHITECTURE_INPUTS", "parse_spec", "format_spec",
           "resolve_architecture"]

#: The papers' architectures (28x28x1 unless :data:`ARCHITECTURE_INPUTS` says otherwise).
ARCHITECTURES: dict[str, str] = {
    # "A new perspective on probabilistic image modeling", Table V
    "A": "F(28,1)-G(49)",
    "B": "F(8,2)-G(49)-F(11,1)-G(49)",
    "C": "F(8,1)-G(49)-P(2,2)-F(11,1)-G(49)",
    "D": "F(3,1)-G(25)-P(2,2)-F(4,1)-G(25)-P(2,2)-F(5,1)-G(49)",
    "E": "F(3,1)-G(25)-F(4,2)-G(25)-F(12,1)-G(49)",
    "F": "F(3,1)-G(25)-F(4,2)-G(25)-F(4,2)-G(25)-F(5,1)-G(49)",
    "G": "F(3,1)-G(25)-P(2,2)-F(3,1)-G(25)-P(2,2)-F(3,1)-G(25)-P(2,2)-F(2,1)-G(49)",
    "SVHN": "F(12,5)-G(64,independent)-F(5,5)-G(100)",
    # "Image modeling with deep convolutional GMMs", Table I
    "1L": "F(28,28,1,1)-G(25)",
    "2L-a": "F(20,20,8,8)-G(25)-F(2,2,1,1)-G(36)",
    "2L-b": "F(7,7,7,7)-G(25)-F(4,4,1,1)-G(36)",
    "2L-c": "F(8,8,2,2)-G(25)-F(11,11,1,1)-G(36)",
    "2L-d": "F(28,28,1,1)-G(25)-F(1,1,1,1)-G(36)",
    "2L-e": "F(4,4,2,2)-G(25)-F(13,13,1,1)-G(36)",
    "3L-a": "F(3,3,1,1)-G(25)-P(2,2)-F(4,4,1,1)-G(25)-P(2,2)-F(6,6,1,1)-G(49)",
    "3L-b": "F(28,28,1,1)-G(25)-F(1,1,1,1)-G(25)-F(1,1,1,1)-G(25)",
}

#: Input shapes (H, W, C) of architectures not made for 28x28x1 images.
ARCHITECTURE_INPUTS: dict[str, tuple[int, int, int]] = {"SVHN": (32, 32, 3)}

_LAYER_RE = re.compile(r"^([A-Za-z])\s*\(([^()]*)\)$")


@dataclass(frozen=True)
class LayerSpec:
    """One parsed layer: ``kind`` in F, P, G, C and its arguments in the long notation."""

    kind: str
    args: tuple[int, ...]
    independent: bool = False

    def __str__(self) -> str:
        inner = ",".join(str(a) for a in self.args)
        if self.kind == "G" and self.independent:
            inner += ",independent"
        return f"{self.kind}({inner})"


def _ints(token: str, parts: list[str], spec: str) -> tuple[int, ...]:
    if not all(re.fullmatch(r"\d+", p) for p in parts):
        raise SpecError(f"layer '{token}' in spec '{spec}': arguments must be integers")
    values = tuple(int(p) for p in parts)
    if any(v < 1 for v in values):
        raise SpecError(f"layer '{token}' in spec '{spec}': arguments must be >= 1")
    return values


def _parse_layer(token: str, spec: str) -> LayerSpec:
    m = _LAYER_RE.match(token)
    if not m:
        raise SpecError(f"malformed layer '{token}' in spec '{spec}': expected e.g. F(8,2), "
                        f"P(2,2), G(25) or C(10)")
    kind, inner = m.group(1).upper(), m.group(2)
    parts = [p.strip() for p in inner.split(",")] if inner.strip() else []
    if kind in ("F", "P"):
        if len(parts) not in (2, 4):
            raise SpecError(f"layer '{token}' in spec '{spec}': {kind} takes 2 arguments "
                            f"({kind}(size,stride)) or 4 ({kind}(sy_size,sx_size,sy,sx))")
        v = _ints(token, parts, spec)
        return LayerSpec(kind, (v[0], v[0], v[1], v[1]) if len(v) == 2 else v)
    if kind == "G":
        independent = False
        if len(parts) == 2:
            mode = parts[1].lower()
            if mode not in ("independent", "shared"):
                raise SpecError(f"layer '{token}' in spec '{spec}': second argument of G must be "
                                f"'independent' or 'shared', got '{parts[1]}'")
            independent, parts = mode == "independent", parts[:1]
        if len(parts) != 1:
            raise SpecError(f"layer '{token}' in spec '{spec}': G takes G(K) or G(K,independent)")
        return LayerSpec("G", _ints(token, parts, spec), independent)
    if kind == "C":
        if len(parts) not in (1, 2):
            raise SpecError(f"layer '{token}' in spec '{spec}': C takes C(classes) or "
                            f"C(classes, n) (n: number of top GMM layers it sees)")
        v = _ints(token, parts, spec)
        return LayerSpec("C", v if len(v) == 2 and v[1] > 1 else v[:1])
    raise SpecError(f"unknown layer type '{m.group(1)}' in '{token}' of spec '{spec}': expected "
                    f"F (folding), P (pooling), G (GMM) or C (classifier)")


def resolve_architecture(name_or_spec: str) -> tuple[str, tuple[int, int, int] | None]:
    """Spec string for an architecture name (or the spec itself) and its native input shape."""
    text = name_or_spec.strip()
    for name, spec in ARCHITECTURES.items():
        if text == name or text.lower() == name.lower():
            return spec, ARCHITECTURE_INPUTS.get(name, (28, 28, 1))
    if "(" not in text:
        raise SpecError(f"unknown architecture '{text}': known names are "
                        f"{', '.join(ARCHITECTURES)}; or give a spec such as F(8,2)-G(25)")
    return text, None


def parse_spec(spec: str) -> list[LayerSpec]:
    """Parse a spec string or architecture name into layer specs (long notation).

    Checks the order of layers (at least one GMM; a classifier only last); shapes are checked
    when the model is built, since they depend on the input.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError("empty model spec: give an architecture name or e.g. F(8,2)-G(25)")
    text, _ = resolve_architecture(spec)
    tokens = [t.strip() for t in re.split(r"-(?![^(]*\))", text)]
    if any(not t for t in tokens):
        raise SpecError(f"malformed spec '{text}': empty layer between '-' separators")
    layers = [_parse_layer(t, text) for t in tokens]
    if not any(layer.kind == "G" for layer in layers):
        raise SpecError(f"spec '{text}' has no GMM layer G(K)")
    for i, layer in enumerate(layers[:-1]):
        if layer.kind == "C":
            raise SpecError(f"spec '{text}': the classifier C({layer.args[0]}) must be the last "
                            f"layer (it is layer {i + 1} of {len(layers)})")
    return layers


def format_spec(layers: list[LayerSpec]) -> str:
    """The long notation of parsed layers; ``parse_spec(format_spec(x)) == x``."""
    return "-".join(str(layer) for layer in layers)
