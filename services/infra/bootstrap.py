"""The first steps of the two services that hold incidents' content, intake and audit.

Both read the policy and the directory, authenticate callers (the tokens file or OIDC)
and open the key store under the master key (earlier master keys still open what they
wrapped), migrated before their runtime starts. `content_base` takes these steps for
either; what each service builds on them stays in its app.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.domain.directory import DirectoryFile
from services.domain.policy import Policy
from services.infra.auth import Authenticator, make_authenticator
from services.infra.config import load_yaml_model
from services.infra.crypto import Pseudonyms
from services.infra.keystore import KeyStore, key_store
from services.infra.runtime import Runtime
from services.infra.settings import ContentKeySettings


@dataclass(frozen=True)
class ContentBase:
    """What a content service's app is built on, besides its runtime."""

    policy: Policy
    directory: DirectoryFile
    auth: Authenticator
    keys: KeyStore


def content_base(
    settings: ContentKeySettings, runtime: Runtime, pseudonyms: Pseudonyms | None = None
) -> ContentBase:
    """The policy, directory, authenticator and key store (with `pseudonyms`, for a
    service that makes them) of the service that `runtime` runs.

    Configuration errors surface here, before anything starts: nothing connects until
    the runtime starts, which first migrates the key store's schema.
    """
    policy = load_yaml_model(settings.policy_file, Policy)
    directory = load_yaml_model(settings.directory_file, DirectoryFile)
    auth = make_authenticator(settings)
    keys = key_store(
        settings.master_key,
        settings.master_key_file,
        settings.schema_name(settings.keys_schema),
        pseudonyms,
        settings.previous_master_key_files,
    )
    runtime.before_start.append(lambda: keys.migrate(settings.database_url))
    return ContentBase(policy, directory, auth, keys)
