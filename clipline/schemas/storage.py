"""One storage section feeding both fsspec/s3fs (reads) and LanceDB (the table).

s3fs and LanceDB spell the same settings differently (`endpoint_url` vs `aws_endpoint`, a
`profile` vs explicit keys); users configure them once here. Secrets are never part of this
config: they come from the environment or the standard AWS chain, are resolved only in the
process that writes the table, and never reach logs, errors, manifests or the table.
"""

from __future__ import annotations

from pydantic import Field

from clipline.schemas.base import StrictModel

S3_SCHEMES = ("s3://", "s3a://")


def is_s3(url: str) -> bool:
    return url.startswith(S3_SCHEMES)


class StorageConfig(StrictModel):
    """Object-storage settings shared by the source, image URIs, checkpoints and the sink."""

    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint, e.g. MinIO")
    region: str | None = None
    anonymous: bool = Field(default=False, description="Unsigned requests (public buckets)")
    profile: str | None = Field(default=None, description="AWS profile from ~/.aws for credentials")

    def fsspec_options(self, url: str) -> dict:
        """Keyword arguments for `fsspec.open`/`url_to_fs` on `url` (none for local paths)."""
        if not is_s3(url):
            return {}
        # botocore's standard retry mode backs off on throttling (503 SlowDown) and connection
        # errors; a short connect timeout makes an unreachable endpoint fail in seconds.
        options: dict = {
            "anon": self.anonymous,
            "config_kwargs": {"connect_timeout": 5, "retries": {"max_attempts": 6, "mode": "standard"}},
        }
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.region:
            options["client_kwargs"] = {"region_name": self.region}
        if self.profile:
            options["profile"] = self.profile
        return options

    def lance_options(self, url: str) -> dict[str, str]:
        """LanceDB `storage_options` for `url`, credentials resolved through the AWS chain.

        LanceDB's object store does not read AWS profiles, so the driver resolves the chain
        (environment, profile, instance role) with botocore and passes the result in-process.
        """
        if not is_s3(url):
            return {}
        options: dict[str, str] = {}
        if self.endpoint_url:
            options["aws_endpoint"] = self.endpoint_url
            if self.endpoint_url.startswith("http://"):
                options["allow_http"] = "true"
        if self.region:
            options["aws_region"] = self.region
        if self.anonymous:
            options["aws_skip_signature"] = "true"
            return options
        return {**resolve_credentials(self.profile), **options}


def resolve_credentials(profile: str | None) -> dict[str, str]:
    """Keys from the standard AWS chain as LanceDB option names; empty when none are found."""
    import botocore.session

    session = botocore.session.Session(profile=profile)
    credentials = session.get_credentials()
    if credentials is None:
        return {}
    frozen = credentials.get_frozen_credentials()
    resolved = {"aws_access_key_id": frozen.access_key, "aws_secret_access_key": frozen.secret_key}
    if frozen.token:
        resolved["aws_session_token"] = frozen.token
    region = session.get_config_variable("region")
    if region:
        resolved["aws_region"] = region
    return resolved
