"""What a failure of the Hub client means, in one actionable line, classified by exception type."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from captioner.hub.sources import HubSource


def network_errors() -> tuple[type[BaseException], ...]:
    """Failures that mean "the Hub cannot be reached" rather than "the Hub said no".

    OfflineModeIsEnabled (HF_HUB_OFFLINE=1) is a ConnectionError.
    """
    import httpx2

    return httpx2.TransportError, ConnectionError, TimeoutError


def chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def is_unreachable(error: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    for exc in chain(error):
        if isinstance(exc, network_errors()):
            return True
        if isinstance(exc, HfHubHTTPError) and (status(exc) or 0) >= 500:
            return True
    return False


def first_line(error: BaseException | str) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= 200 else line[:197] + "..."


def brief(error: BaseException) -> str:
    detail = first_line(error)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def unreachable(error: BaseException) -> str:
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    for exc in chain(error):
        if isinstance(exc, OfflineModeIsEnabled):
            return "offline mode is on (HF_HUB_OFFLINE=1)"
        if isinstance(exc, HfHubHTTPError) and (status(exc) or 0) >= 500:
            return f"the Hub at {constants.ENDPOINT} is unavailable (HTTP {status(exc)})"
    root = next((e for e in chain(error) if isinstance(e, network_errors())), error)
    return f"the Hub at {constants.ENDPOINT} could not be reached ({brief(root)})"


def explain(src: HubSource, error: BaseException, *, downloading: bool = False) -> str:
    """One actionable line for a failure of huggingface_hub, looking through the exception chain."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    page = f"{constants.ENDPOINT}/{src.repo_id}"
    for exc in chain(error):
        if isinstance(exc, GatedRepoError):
            if status(exc) == 403:
                return (
                    f"your token has no access to the gated repository {src.repo_id}; request access at {page} "
                    "or use a token of an account that has it"
                )
            return (
                f"{src.repo_id} is a gated repository and no token was sent; accept its conditions at {page}, "
                "then set HF_TOKEN (or run `hf auth login`)"
            )
        if isinstance(exc, RevisionNotFoundError):
            return (
                f"revision '{src.revision or constants.DEFAULT_REVISION}' does not exist in {src.repo_id}; "
                "use an existing commit SHA (preferred), tag or branch"
            )
        if isinstance(exc, RepositoryNotFoundError):
            return (
                f"repository {src.repo_id} was not found on {constants.ENDPOINT}; check OWNER/REPO, and if it is "
                "private set HF_TOKEN to a token that can read it"
            )
        if isinstance(exc, HfHubHTTPError) and status(exc) == 401:
            return "the Hub rejected the token (HTTP 401); set HF_TOKEN to a valid token, or unset it for public repos"
        if isinstance(exc, HfHubHTTPError) and status(exc) == 403:
            return f"access to {src.repo_id} was denied (HTTP 403); use a token with read access to it"
    if is_unreachable(error):
        if downloading:
            root = next((e for e in chain(error) if isinstance(e, network_errors())), error)
            return (
                f"the connection to the Hub was lost during the download ({brief(root)}); the partial file was "
                "discarded, retry when the connection is stable"
            )
        return unreachable(error)
    if isinstance(error, HfHubHTTPError):
        return f"the Hub answered HTTP {status(error)} ({first_line(error)})"
    # The one failure huggingface_hub raises as a bare OSError, with no type of its own to test for.
    if "consistency check failed" in str(error).lower():
        return f"a file arrived incomplete ({first_line(error)}); it was discarded, retry the download"
    return f"could not store it in the Hugging Face cache {constants.HF_HUB_CACHE} ({brief(error)})"


def explain_push(repo_id: str, error: BaseException) -> str:
    """One actionable line for a failed upload, looking through the exception chain."""
    from huggingface_hub.errors import BadRequestError, HfHubHTTPError, RepositoryNotFoundError

    namespace = repo_id.split("/")[0]
    for exc in chain(error):
        code = status(exc) if isinstance(exc, HfHubHTTPError) else None
        if code == 401 or isinstance(exc, RepositoryNotFoundError):
            return (
                "the Hub did not accept the credentials (no token, or an invalid one); run `hf auth login` or set "
                "HF_TOKEN to a token with write access"
            )
        if code == 403:
            return f"the token cannot write to {repo_id} (HTTP 403); use a write token of {namespace} or of a member"
        if code is not None and code < 500:
            return f"the Hub answered HTTP {code} ({first_line(exc)})"
        if isinstance(exc, ValueError) and isinstance(exc.__cause__, BadRequestError):  # create_commit's YAML check
            return f"the Hub rejected the model card metadata ({first_line(exc)})"
    if is_unreachable(error):
        return unreachable(error)
    return brief(error)
