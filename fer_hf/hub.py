"""Hugging Face Hub access checks, run before any work so a missing login fails in seconds, not after training."""

from __future__ import annotations

import logging

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

logger = logging.getLogger(__name__)


class HubAccessError(RuntimeError):
    """The Hub cannot be written to: no credentials, or no network."""


def check_push_access(repo_id: str, token: str | None = None) -> str:
    """Return the user name the upload will run as, or raise HubAccessError saying how to fix it."""
    try:
        user = HfApi(token=token).whoami()["name"]
    except LocalTokenNotFoundError as err:
        raise HubAccessError(
            f"--push_to_hub to {repo_id!r}: no Hugging Face credentials. Run `hf auth login` (or set HF_TOKEN) with "
            "a token that can write, or drop --push_to_hub."
        ) from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise HubAccessError(
            f"--push_to_hub to {repo_id!r}: cannot reach the Hugging Face Hub to check the token ({err}). "
            "Push later with `python -m fer_hf.push OUTPUT_DIR --repo_id USER/NAME`, or drop --push_to_hub."
        ) from err
    logger.info("Will push to %s as %s", repo_id, user)
    return user
