"""Sources: where raw records come from. Each yields ``bytes`` (or ``PubsubMessage``) records for
:class:`pipeline.transforms.parse.ParseEvents`; no decoding happens here, so a line that is not
UTF-8 still reaches the parser and becomes a dead letter instead of failing the read."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.coders import BytesCoder


class ReadEventFiles(beam.PTransform):
    """Newline-delimited files matching a glob -> one ``bytes`` record per line (bounded)."""

    def __init__(self, file_pattern: str) -> None:
        super().__init__()
        if not file_pattern:
            raise ValueError("file_pattern must not be empty")
        self._pattern = file_pattern

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "ReadLines" >> beam.io.ReadFromText(
            self._pattern, coder=BytesCoder(), strip_trailing_newlines=True
        ).with_output_types(bytes)
