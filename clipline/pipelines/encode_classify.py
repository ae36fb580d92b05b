"""The actor Ray Data runs in the encoder pool: one model loaded once, encode then score.

Kept apart from `embed` so an encoder worker imports the model code but not LanceDB, the ledger
or the report renderer, which only the driver uses.
"""

from __future__ import annotations

import pyarrow as pa

from clipline.models.prompt_cache import PromptCache
from clipline.operators.classify import ClassifyPolicy
from clipline.operators.encode import EncodeClip
from clipline.schemas.config import ModelConfig
from clipline.schemas.policy import Policy
from clipline.schemas.storage import StorageConfig


class EncodeClassifyActor:
    """One actor = one model in memory; it encodes then scores, sharing the loaded model."""

    def __init__(
        self,
        model: ModelConfig,
        policy: Policy | None,
        threads: int,
        storage: StorageConfig,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self.encode = EncodeClip(model, cpus=threads, storage=storage)
        self.encode.setup()
        self.classify = ClassifyPolicy(policy, cache=prompt_cache) if policy is not None else None
        if self.classify is not None:
            self.classify.setup(self.encode.bundle)

    def __call__(self, batch: pa.Table) -> pa.Table:
        encoded = self.encode(batch)
        return self.classify(encoded) if self.classify is not None else encoded
