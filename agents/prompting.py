"""The prompt the LLM recommender sees and the completion it writes: pure functions shared with training.

The agent and the trainer must agree on every character and every token: training scores exactly the
token ids the agent decoded. Both sides therefore build text with :func:`build_prompt` /
:func:`build_completion` and tokenize it with :func:`encode_prompt` / :func:`encode_completion` (prompt
and completion tokenized separately, the completion without special tokens); :func:`encode_completions` is the
batched form of :func:`encode_completion` (the one implementation both use). The agent's token trie is built from
``encode_completions(tokenizer, [build_completion(t) for t in titles])`` and it feeds the decoded completion
tokens right after ``encode_prompt(tokenizer, prompt)``; the trainers' ``train.encoding`` calls the same two
functions, so there is no second tokenization path.

Change :data:`PROMPT_FORMAT_VERSION` whenever the text produced here changes: records and adapters made
with another version were trained on other prompts.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ulrec_env.world import World

__all__ = [
    "COMPLETION_TERMINATOR",
    "COMPACT_INSTRUCTION",
    "INSTRUCTION",
    "PROMPT_FORMAT_VERSION",
    "SESSION_WINDOWS",
    "build_completion",
    "build_messages",
    "build_prompt",
    "encode_completion",
    "encode_completions",
    "encode_prompt",
    "format_item",
    "parse_completion",
]

#: How ``max_session`` cuts the session part of a prompt (see :func:`build_messages`).
SESSION_WINDOWS = ("sliding", "block")

#: Version of the prompt and completion format below.
PROMPT_FORMAT_VERSION = 1

#: Ends every completion, so that a title that is a prefix of another title ("Siege" / "Siege 2") is still a
#: complete, distinct token sequence. Tokenizer-independent on purpose.
COMPLETION_TERMINATOR = "\n"

#: The system instruction without (``COMPACT_INSTRUCTION``: about 70 fewer tokens per prompt, which matters for
#: tuning on a CPU) and with one worked example, as in the seed's prompt. It comes first in every prompt,
#: so all users share its tokens and the agent computes its KV cache once.
COMPACT_INSTRUCTION = (
    "You are a recommender system. Recommend one item at a time. The user leaves when an item is disliked, "
    "repeated or too similar to recent ones, so vary the picks and keep the user engaged as long as possible. "
    "Answer with the title of one catalog item only."
)
INSTRUCTION = (
    COMPACT_INSTRUCTION + "\n\n"
    "Example:\nHistory:\nStar Colony (Sci-Fi)\nMoon Base (Sci-Fi)\nSession:\n"
    "1. Jungle Quest (Adventure): continued, rating 4.1\nNext item?\nAnswer: Harbor Lights"
)


def format_item(world: World, item: int) -> str:
    """``"Title (Genre/Genre)"``: how an item appears in a prompt."""
    genres = world.genres[int(item)]
    title = world.titles[int(item)]
    return f"{title} ({'/'.join(genres)})" if genres else title


def _valid_ids(ids: Any, name: str, n_items: int) -> np.ndarray:
    arr = np.asarray(ids if ids is not None else [], dtype=np.int64).reshape(-1)
    arr = arr[arr >= 0]  # -1 pads the observation arrays
    if arr.size and arr.max() >= n_items:
        raise ValueError(f"`{name}` holds item id {int(arr.max())}, outside [0, {n_items}) of the world's catalog.")
    return arr


def build_messages(
    world: World,
    history_ids: Sequence[int] | np.ndarray,
    shown_ids: Sequence[int] | np.ndarray = (),
    shown_rewards: Sequence[float] | np.ndarray = (),
    max_history: int = 15,
    max_session: int | None = None,
    worked_example: bool = True,
    session_window: str = "sliding",
) -> list[dict[str, str]]:
    """The chat messages (system instruction, user turn) of one decision.

    Args:
        world: The world whose titles and genres are shown.
        history_ids: The user's past items, oldest first (``-1`` entries, the observation's padding, are dropped).
        shown_ids: Items recommended so far in this session, oldest first (``-1`` dropped).
        shown_rewards: The reward each of ``shown_ids`` earned (same length, padding aligned).
        max_history: How many of the most recent history items to show.
        max_session: How many of the most recent session steps to show (``None``: all).
        worked_example: Put the worked example in the instruction (``INSTRUCTION``) or not
            (``COMPACT_INSTRUCTION``).
        session_window: How ``max_session`` is applied. ``"sliding"``: the last ``max_session`` steps (each step
            drops the oldest line, so a prompt never extends the previous one). ``"block"``: the steps from the
            last multiple of ``max_session`` that leaves at least ``max_session`` of them, i.e. between
            ``max_session`` and ``2 * max_session - 1`` recent steps; lines are dropped ``max_session`` at a time,
            so for ``max_session - 1`` steps out of ``max_session`` the prompt extends the previous step's and the
            agent's session cache reuses it (see :class:`agents.llm.LLMRecommender`).

    Returns:
        ``[{"role": "system", ...}, {"role": "user", ...}]``.
    """
    if isinstance(max_history, bool) or not isinstance(max_history, (int, np.integer)) or max_history < 0:
        raise ValueError(f"`max_history` must be an integer >= 0, got {max_history!r}.")
    if max_session is not None and (isinstance(max_session, bool) or not isinstance(max_session, (int, np.integer)) or max_session < 0):
        raise ValueError(f"`max_session` must be None or an integer >= 0, got {max_session!r}.")
    history = _valid_ids(history_ids, "history_ids", world.n_items)
    shown_raw = np.asarray(shown_ids if shown_ids is not None else [], dtype=np.int64).reshape(-1)
    rewards_raw = np.asarray(shown_rewards if shown_rewards is not None else [], dtype=np.float64).reshape(-1)
    if rewards_raw.size and rewards_raw.size != shown_raw.size:
        raise ValueError(
            f"`shown_rewards` has {rewards_raw.size} entries for {shown_raw.size} `shown_ids`; pass one reward per item."
        )
    keep = shown_raw >= 0
    shown = _valid_ids(shown_raw[keep], "shown_ids", world.n_items)
    rewards = rewards_raw[keep] if rewards_raw.size else np.zeros(shown.size)

    lines = ["History:"]
    recent = history[-max_history:] if max_history else history[:0]
    lines.extend(format_item(world, i) for i in recent)
    if not recent.size:
        lines.append("(none)")
    if session_window not in SESSION_WINDOWS:
        raise ValueError(f"`session_window` must be one of {SESSION_WINDOWS}, got {session_window!r}.")
    if max_session is None:
        first = 0
    elif session_window == "sliding" or max_session == 0:
        first = max(0, shown.size - max_session)
    else:
        first = max_session * ((shown.size - max_session) // max_session) if shown.size >= max_session else 0
    if shown.size:
        lines.append("Session:")
        for k in range(first, shown.size):
            lines.append(f"{k + 1}. {format_item(world, shown[k])}: continued, rating {rewards[k]:.1f}")
    lines.append("Next item?")
    instruction = INSTRUCTION if worked_example else COMPACT_INSTRUCTION
    return [{"role": "system", "content": instruction}, {"role": "user", "content": "\n".join(lines)}]


def build_prompt(
    world: World,
    history_ids: Sequence[int] | np.ndarray,
    shown_ids: Sequence[int] | np.ndarray = (),
    shown_rewards: Sequence[float] | np.ndarray = (),
    tokenizer: Any = None,
    max_history: int = 15,
    max_session: int | None = None,
    worked_example: bool = True,
    session_window: str = "sliding",
) -> str:
    """The exact prompt text of one decision.

    The user's recent history (titles with genres), this session so far (each recommended item, that the
    user continued and the reward it earned) and the instruction; inside the tokenizer's chat template
    (with the generation prompt) when it has one, plain text ending in ``"Answer: "`` otherwise.

    Args:
        world: The world whose titles and genres are shown.
        history_ids: The user's past items, oldest first (``-1`` padding dropped).
        shown_ids: This session's recommended items, oldest first (``-1`` padding dropped).
        shown_rewards: The rewards of ``shown_ids``.
        tokenizer: A Hugging Face tokenizer; its ``chat_template`` is applied when set.
        max_history: How many of the most recent history items to show.
        max_session: How many of the most recent session steps to show (``None``: all).
        worked_example: Include the instruction's worked example (see :func:`build_messages`).
        session_window: ``"sliding"`` or ``"block"`` (see :func:`build_messages`).

    Returns:
        The prompt string; the completion (:func:`build_completion`) follows it directly.
    """
    messages = build_messages(world, history_ids, shown_ids, shown_rewards, max_history, max_session, worked_example,
                              session_window)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{messages[0]['content']}\n\n{messages[1]['content']}\nAnswer: "


def build_completion(title: str) -> str:
    """The completion text for an item title: the title followed by :data:`COMPLETION_TERMINATOR`.

    Raises:
        ValueError: the title is empty or contains the terminator (it could not be decoded unambiguously).
    """
    if not isinstance(title, str) or not title.strip():
        raise ValueError(f"`title` must be a non-empty string, got {title!r}.")
    if COMPLETION_TERMINATOR in title:
        raise ValueError(f"title {title!r} contains the completion terminator {COMPLETION_TERMINATOR!r}; remove it from the catalog.")
    return title + COMPLETION_TERMINATOR


def parse_completion(completion: str) -> str:
    """The title part of a completion (text before the first terminator, stripped)."""
    return completion.split(COMPLETION_TERMINATOR, 1)[0].strip()


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a prompt: ``tokenizer(prompt).input_ids`` (special tokens as the tokenizer adds them)."""
    return list(tokenizer(prompt).input_ids)


def encode_completion(tokenizer: Any, completion: str) -> list[int]:
    """Token ids of a completion: ``tokenizer(completion, add_special_tokens=False).input_ids``."""
    return encode_completions(tokenizer, [completion])[0]


def encode_completions(tokenizer: Any, completions: Sequence[str]) -> list[list[int]]:
    """Token ids of many completions in one tokenizer call (what :func:`encode_completion` does for one).

    Args:
        tokenizer: A Hugging Face tokenizer.
        completions: Completion texts (:func:`build_completion`).

    Returns:
        Per completion, ``tokenizer(completion, add_special_tokens=False).input_ids``.
    """
    return [list(ids) for ids in tokenizer(list(completions), add_special_tokens=False).input_ids]
