"""Share a pruned model: upload its folder, with its model card, to the Hugging Face Hub.

:func:`push` takes a run directory (its final ``model/`` is uploaded, with a card written from
``report.json``) or a saved pruned-model folder (a minimal card is written if it has none). Before any
work, :func:`check_hub` asks the Hub who the token belongs to (``whoami``): offline, with
``HF_HUB_OFFLINE=1``, without a token or with a rejected one, the push stops with one clear
:class:`HubError`. The upload itself is ``HfApi.create_repo(exist_ok=True)`` then ``HfApi.upload_folder``.

Example:
    >>> push("runs/struct2x", "your-name/minilm-struct-2x")     # doctest: +SKIP
    'https://huggingface.co/your-name/minilm-struct-2x'
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

from blockprune.report.card import CARD_FILE, folder_card, set_repo_id, write_card, write_run_card

_TRUE = {"1", "on", "yes", "true"}


class HubError(ValueError):
    """The Hub cannot be reached or refuses the push; the message says why and what to do."""


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set now or when huggingface_hub was imported."""
    now = any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return now or bool(constants.HF_HUB_OFFLINE)


def check_hub(repo_id: str, token: str | None = None) -> str:
    """Check, cheaply and before any work, that ``repo_id`` is valid and the Hub accepts the token; return the user.

    Raises:
        HubError: bad repository id, offline mode, no network, no token, or a rejected token.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubError(f"repository id {repo_id!r} is not valid ({err}); use NAME or OWNER/NAME") from None
    if _offline():
        raise HubError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it and be online to push "
                       "(later: `blockprune push RUN_DIR REPO_ID`)")
    try:
        who = HfApi(token=token).whoami()
    except LocalTokenNotFoundError:
        raise HubError("no Hugging Face token found: pass --token, set HF_TOKEN, or run `hf auth login`") from None
    except OfflineModeIsEnabled:
        raise HubError("huggingface_hub is in offline mode (HF_HUB_OFFLINE), so nothing can be pushed; unset it "
                       "and be online to push") from None
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 401:
            raise HubError("the Hugging Face Hub rejected the token (401): pass a valid --token or run "
                           "`hf auth login`") from None
        raise HubError(f"the Hugging Face Hub answered {status} to whoami ({err}); try again later") from None
    except Exception as err:  # noqa: BLE001 - the network layer's errors differ between huggingface_hub versions
        raise HubError(f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({type(err).__name__}: {err}); "
                       "check the network connection and push later with `blockprune push RUN_DIR REPO_ID`") from None
    return str(who.get("name", "")) if isinstance(who, dict) else ""


def model_folder(path: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """The folder to upload and, when ``path`` is a run directory (or its ``model/``), that run directory.

    Raises:
        HubError: ``path`` is neither a run directory with a final model nor a saved pruned-model folder.
    """
    from blockprune.store.saving import SHAPES_FILE

    path = Path(path)
    if (path / "report.json").is_file() and (path / "model").is_dir():
        return path / "model", path
    if path.name == "model" and (path.parent / "report.json").is_file():
        return path, path.parent
    if (path / SHAPES_FILE).is_file():
        return path, None
    raise HubError(f"{path} is neither a run directory (report.json and model/) nor a pruned model folder "
                   f"({SHAPES_FILE}); give the --output-dir of `blockprune prune` or a `blockprune shrink` output")


def push(path: str | os.PathLike[str], repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload the final model folder of ``path`` with its card to ``repo_id``; return the repository URL.

    The card's load snippet names ``repo_id``. A card the folder already has that blockprune did not
    write is kept as it is.
    """
    folder, run_dir = model_folder(path)
    check_hub(repo_id, token)
    if run_dir is not None:
        write_run_card(run_dir, repo_id=repo_id)
    elif not (folder / CARD_FILE).is_file():
        write_card(folder, folder_card(folder, repo_id))
    else:
        set_repo_id(folder, repo_id)
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="Upload a model pruned with blockprune")
    except HfHubHTTPError as err:
        raise HubError(f"the Hugging Face Hub refused the upload to {repo_id} ({err}); check that the token may "
                       "write there") from None
    return str(url)
