"""Hugging Face Hub: what reads as a repo id, and access checks run before any work so a missing login fails in
seconds, not after training."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

logger = logging.getLogger(__name__)

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # USER/NAME, as the Hub allows them


def is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub repo id (`USER/NAME`) rather than a local path: one slash, and nothing of that
    name here."""
    return bool(name and REPO_ID.fullmatch(name)) and not Path(name).expanduser().exists()


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
