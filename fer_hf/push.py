"""Upload a saved run to the Hugging Face Hub: model, config, model card, figures and metrics.

    python -m fer_hf.push outputs/paper_resnet50 --repo_id USER/fer2013-resnet50
    python -m fer_hf.push outputs/paper_resnet50 --repo_id USER/fer2013-resnet50 --dry_run   # list, upload nothing

The card (README.md) is regenerated for the repository first, unless it was edited by hand (its fer_hf marker
line removed). Checkpoints, optimizer states and pickled training arguments are not uploaded.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from fer_hf import cli
from fer_hf.hub import HubAccessError
from fer_hf.model_files import CONFIG_FILE, WEIGHTS_FILE
from fer_hf.report.model_card import CARD_NAME, GENERATED_MARKER, write_model_card
from fer_hf.run_dir import (
    ALL_RESULTS,
    ARGS_FILE,
    SPLIT_RESULTS,
    TRAINER_STATE,
    confusion_file,
)

logger = logging.getLogger(__name__)

REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)
# What a model repository needs, and what its card shows or cites; nothing else from the run folder.
UPLOAD_PATTERNS = (
    CONFIG_FILE, WEIGHTS_FILE, "preprocessor_config.json", CARD_NAME, ARGS_FILE, ALL_RESULTS, *SPLIT_RESULTS,
    TRAINER_STATE, confusion_file("*"), "*.png",
)


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection failures as the installed huggingface_hub raises them: requests' are OSErrors, httpx's are not."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):  # huggingface_hub 2.x uses httpx2, 1.x httpx
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """The folder, if it holds a saved model; else FileNotFoundError saying what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such folder; give the output_dir of `fer_hf.train`.")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run_dir}: missing {', '.join(missing)}; give a folder saved by `fer_hf.train` (its output_dir)."
        )
    return run_dir


def files_to_upload(run_dir: str | os.PathLike) -> list[Path]:
    """The run's files that go to the Hub, sorted; raises if the model itself is missing."""
    run_dir = check_run_dir(run_dir)
    return sorted({path for pattern in UPLOAD_PATTERNS for path in run_dir.glob(pattern) if path.is_file()})


def prepare_card(run_dir: str | os.PathLike, repo_id: str) -> Path:
    """Regenerate README.md for `repo_id` (so its usage snippet names the repository) unless edited by hand."""
    card = check_run_dir(run_dir) / CARD_NAME
    if card.is_file() and GENERATED_MARKER not in card.read_text(encoding="utf-8"):
        logger.info("%s was edited by hand (no fer_hf marker); uploading it as it is", card)
        return card
    return write_model_card(run_dir, repo_id=repo_id)


def push_run(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload FER-2013 model (fer_hf)",
) -> str:
    """Create `repo_id` if needed and upload the run's files in one commit; return the commit URL.

    Raises:
        HubAccessError: offline, no credentials, no network, or no write access (the message says what to do).
    """
    check_repo_id(repo_id)
    check_run_dir(run_dir)
    if constants.is_offline_mode():
        raise HubAccessError(
            f"Cannot upload {run_dir} to {repo_id}: offline mode is on (HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE on a "
            "machine with network access and run the same command again."
        )
    token = token or get_token()
    if token is None:
        raise HubAccessError(
            f"Cannot upload {run_dir} to {repo_id}: no Hugging Face credentials. Run `hf auth login` with a token "
            "that can write (or set HF_TOKEN), then run the same command again."
        )
    prepare_card(run_dir, repo_id)
    files = files_to_upload(run_dir)
    operations = [CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path)) for path in files]
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.create_commit(repo_id, operations, commit_message=commit_message, repo_type="model")
    except OfflineModeIsEnabled as err:
        raise HubAccessError(f"Cannot upload to {repo_id}: offline mode is on ({err}).") from err
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status in (401, 403):
            raise HubAccessError(
                f"Cannot upload to {repo_id}: the token may not write there (HTTP {status}). Use a token with write "
                f"access to {repo_id.split('/')[0]} (`hf auth login`)."
            ) from err
        raise HubAccessError(f"Cannot upload to {repo_id}: the Hub answered {err}. Try again later.") from err
    except _network_errors() as err:
        raise HubAccessError(
            f"Cannot upload to {repo_id}: cannot reach the Hugging Face Hub ({type(err).__name__}: {err}). Check the "
            "network and run the same command again."
        ) from err
    logger.info("Uploaded %d files to %s", len(files), repo_id)
    return info.commit_url


@dataclass
class PushArguments:
    repo_id: str = field(metadata={"help": "Hub repository, USER/NAME or ORG/NAME (created if missing)."})
    token: str | None = field(default=None, metadata={"help": "Write token; default: `hf auth login`'s or HF_TOKEN."})
    private: bool | None = field(default=None, metadata={"help": "Create the repository private."})
    commit_message: str = field(default="Upload FER-2013 model (fer_hf)", metadata={"help": "Commit message."})
    dry_run: bool = field(default=False, metadata={"help": "Write the card and list the files; upload nothing."})

    def __post_init__(self):
        check_repo_id(self.repo_id)  # here too, so that a dry run says what the upload would


def check_repo_id(repo_id: str) -> None:
    """A name the Hub takes for a model repository, USER/NAME or ORG/NAME; else ValueError saying so."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"--repo_id {repo_id!r}: give USER/NAME (or ORG/NAME) ({err})") from None
    if "/" not in repo_id:
        raise ValueError(f"--repo_id {repo_id!r}: give USER/NAME (or ORG/NAME).")


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser("fer_hf.push", __doc__, PushArguments)
    parser.add_argument("run_dir", help="A training output_dir (model.safetensors, config.json, results, figures).")
    args, extra = cli.parse(parser, argv)
    cli.setup_logging(fer_hf_level=logging.WARNING)
    try:
        if args.dry_run:
            prepare_card(extra.run_dir, args.repo_id)
            for path in files_to_upload(extra.run_dir):
                print(f"would upload {path.name} ({path.stat().st_size / 1e6:.2f} MB)")
            return 0
        url = push_run(extra.run_dir, args.repo_id, token=args.token, private=args.private,
                       commit_message=args.commit_message)
    except (HubAccessError, FileNotFoundError, ValueError) as err:
        print(f"fer_hf.push: {err}", file=sys.stderr)
        return 1
    print(f"Uploaded {extra.run_dir} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
