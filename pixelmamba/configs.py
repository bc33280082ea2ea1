"""Pixel-Mamba layer tables (paper Tables 7 and 8; supplement Tables 1 and 2) as data.

Each row is one Pixel-Mamba layer: a bidirectional Mamba block over the whole serialized image,
then Region Fusion, then (on some layers) a Token Expansion. The rows are written exactly as the
paper prints them — receptive field of one token, channels the Mamba block sees, and the optional
expansion that follows — and ``PixelMambaConfig.__post_init__`` checks that consecutive rows agree
(a horizontal expansion doubles the token width, a ``cat`` doubles the channels), so a typo in a
table fails at import time instead of building a silently different network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Axis = Literal["h", "v"]
Join = Literal["cat", "avg"]


@dataclass(frozen=True)
class TokenExpansionSpec:
    """A Token Expansion after a layer: ``axis`` "h" joins horizontal neighbours (width halves),
    "v" joins vertical neighbours (height halves); ``join`` "cat" doubles the channels, "avg"
    keeps them."""

    axis: Axis
    join: Join


@dataclass(frozen=True)
class LayerRow:
    """One row of the layer table.

    ``receptive_h``/``receptive_w`` is the receptive field of one token in pixels (the paper's
    "Token" column, height × width; named so as not to be confused with the token *grid* that
    ``PixelMamba.plan`` reports); ``channels`` is the width of the Mamba block of this layer.
    """

    layer: int
    receptive_h: int
    receptive_w: int
    channels: int
    expansion: TokenExpansionSpec | None = None


def _rows(table: str) -> tuple[LayerRow, ...]:
    """Parse the compact table text below: ``layer  HxW  channels  [h|v-cat|avg]``."""
    rows = []
    for line in table.strip().splitlines():
        parts = line.split()
        layer, token, channels = int(parts[0]), parts[1], int(parts[2])
        receptive_h, receptive_w = (int(v) for v in token.split("x"))
        expansion = None
        if len(parts) == 4:
            axis, join = parts[3].split("-")
            expansion = TokenExpansionSpec(axis, join)  # type: ignore[arg-type]
        rows.append(LayerRow(layer, receptive_h, receptive_w, channels, expansion))
    return tuple(rows)


# Table 7 (Pixel-Mamba-6M). Last column: Horizontal/Vertical TE-Cat/Avg after that layer's RF.
_TABLE_6M = """
1   1x1    3    h-cat
2   1x2    6    v-cat
3   2x2    12   h-cat
4   2x4    24   v-cat
5   4x4    48
6   4x4    48   h-cat
7   4x8    96
8   4x8    96   v-cat
9   8x8    192
10  8x8    192
11  8x8    192  h-avg
12  8x16   192
13  8x16   192
14  8x16   192  v-avg
15  16x16  192
16  16x16  192
17  16x16  192
18  16x16  192
19  16x16  192
20  16x16  192  h-avg
21  16x32  192
22  16x32  192  v-cat
23  32x32  384
24  32x32  384
"""

# Table 8 (Pixel-Mamba-21M): identical to 6M except layer 11 concatenates, so 384 channels from
# layer 12 and 768 after the last expansion.
_TABLE_21M = """
1   1x1    3    h-cat
2   1x2    6    v-cat
3   2x2    12   h-cat
4   2x4    24   v-cat
5   4x4    48
6   4x4    48   h-cat
7   4x8    96
8   4x8    96   v-cat
9   8x8    192
10  8x8    192
11  8x8    192  h-cat
12  8x16   384
13  8x16   384
14  8x16   384  v-avg
15  16x16  384
16  16x16  384
17  16x16  384
18  16x16  384
19  16x16  384
20  16x16  384  h-avg
21  16x32  384
22  16x32  384  v-cat
23  32x32  768
24  32x32  768
"""


FUSION_K_FROM = ("initial", "current")
FUSION_PARTITIONS = ("alternate", "halves")
BIDIRECTIONAL_MERGES = ("mean", "sum")


@dataclass(frozen=True)
class PixelMambaConfig:
    """Everything that fixes the architecture; ``create_model`` overrides the scalar fields.

    ``alpha`` and ``scan_window`` are the paper's (Sec. 3.3, Table 5, supplement Table 3).
    ``d_state``/``d_conv``/``expand`` are the Mamba/Vim defaults the paper inherits. The paper
    gives no positional embedding for pixel tokens, and none is used.

    Readings of sentences the paper leaves open (docs/protocol.md):
    ``fusion_k_from``: the ``n`` of ``k = ceil(alpha * n / L)`` is the ``initial`` region count (k
    constant over the layers, as ToMe's r; the default) or the ``current`` one (k shrinks with n).
    ``fusion_partition``: gallery/probe sets ``alternate`` in scan order (the default, as ToMe) or
    are the first and second ``halves`` of the scan order.
    ``bidirectional_merge``: ``mean`` of the two branches, each with its own conv (Vision Mamba
    v2, the default) or Eq. 1's ``sum`` with one conv ψ shared by both branches.
    """

    name: str
    rows: tuple[LayerRow, ...]
    in_chans: int = 3
    alpha: float = 0.8
    scan_window: int = 224
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    fusion_k_from: str = "initial"
    fusion_partition: str = "alternate"
    bidirectional_merge: str = "mean"
    paper_params: float = field(default=0.0, compare=False)

    def __post_init__(self) -> None:
        rows = self.rows
        if [r.layer for r in rows] != list(range(1, len(rows) + 1)):
            raise ValueError(f"{self.name}: layer ids must be 1..{len(rows)}")
        if (rows[0].receptive_h, rows[0].receptive_w, rows[0].channels) != (1, 1, self.in_chans):
            raise ValueError(f"{self.name}: layer 1 must see 1x1 pixel tokens of {self.in_chans} channels")
        for prev, row in zip(rows, rows[1:]):
            want = (prev.receptive_h, prev.receptive_w, prev.channels)
            if prev.expansion is not None:
                h, w, c = want
                h, w = (h, w * 2) if prev.expansion.axis == "h" else (h * 2, w)
                want = (h, w, c * 2 if prev.expansion.join == "cat" else c)
            if (row.receptive_h, row.receptive_w, row.channels) != want:
                raise ValueError(f"{self.name}: layer {row.layer} should be {want} after layer {prev.layer}")
        if rows[-1].expansion is not None:
            raise ValueError(f"{self.name}: the last layer cannot expand (nothing would see it)")
        if self.scan_window % self.receptive_h_max or self.scan_window % self.receptive_w_max:
            raise ValueError(
                f"scan_window {self.scan_window} must be a multiple of the final token size "
                f"{self.receptive_h_max}x{self.receptive_w_max} (every expansion halves the region grid)"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        for opt, allowed in (("fusion_k_from", FUSION_K_FROM), ("fusion_partition", FUSION_PARTITIONS),
                             ("bidirectional_merge", BIDIRECTIONAL_MERGES)):
            if getattr(self, opt) not in allowed:
                raise ValueError(f"{opt} must be one of {allowed}, got {getattr(self, opt)!r}")

    @property
    def depth(self) -> int:
        return len(self.rows)

    @property
    def receptive_h_max(self) -> int:
        return self.rows[-1].receptive_h

    @property
    def receptive_w_max(self) -> int:
        return self.rows[-1].receptive_w

    @property
    def num_features(self) -> int:
        return self.rows[-1].channels


CONFIGS: dict[str, PixelMambaConfig] = {
    "pixelmamba-6m": PixelMambaConfig("pixelmamba-6m", _rows(_TABLE_6M), paper_params=6.2e6),
    "pixelmamba-21m": PixelMambaConfig("pixelmamba-21m", _rows(_TABLE_21M), paper_params=21e6),
}
