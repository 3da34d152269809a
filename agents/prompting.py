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

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ulrec_env.world import World

__all__ = [
    "COMPLETION_TERMINATOR",
    "COMPACT_INSTRUCTION",
    "COMPLETION_STYLES",
    "INSTRUCTION",
    "PROMPT_FORMAT_VERSION",
    "PromptFormat",
    "SESSION_WINDOWS",
    "build_completion",
    "build_messages",
    "build_prompt",
    "encode_completion",
    "encode_completions",
    "encode_prompt",
    "format_item",
    "genres_part",
    "item_completion",
    "parse_completion",
    "prompt_of_observation",
]

#: How ``max_session`` cuts the session part of a prompt (see :func:`build_messages`).
SESSION_WINDOWS = ("sliding", "block")

#: What a completion holds for an item (:attr:`PromptFormat.completion`): ``"title"``, the title alone (the seed's
#: format), or ``"genres-title"``, the item's genres, ``": "`` and its title (``"Sci-Fi/Drama: Moon Base"``).
COMPLETION_STYLES = ("title", "genres-title")

#: Separates the genres from the title in a ``"genres-title"`` completion.
GENRES_SEPARATOR = ": "

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


@dataclass(frozen=True)
class PromptFormat:
    """How a prompt is written: the one record of it that the agent, teacher prompts, rollouts, labels, adapters
    and the loop all carry (rollout summaries, label metadata and adapter sidecars save :meth:`to_dict` under
    ``"prompt"``; :meth:`from_dict` reads it back).

    Attributes:
        max_history: How many of the user's most recent history items to show.
        max_session: How many of this session's most recent steps to show (``None``: all).
        worked_example: Put the worked example in the instruction (``INSTRUCTION``) or not
            (``COMPACT_INSTRUCTION``, about 70 fewer tokens).
        session_window: How ``max_session`` is applied. ``"sliding"``: the last ``max_session`` steps (each step
            drops the oldest line, so a prompt never extends the previous one). ``"block"``: the steps from the
            last multiple of ``max_session`` that leaves at least ``max_session`` of them, i.e. between
            ``max_session`` and ``2 * max_session - 1`` recent steps; lines are dropped ``max_session`` at a time,
            so for ``max_session - 1`` steps out of ``max_session`` the prompt extends the previous step's and the
            agent's session cache reuses it (see :class:`agents.llm.LLMRecommender`).
        completion: What the model writes for the item it recommends (:data:`COMPLETION_STYLES`). ``"title"``:
            the title alone, as in the seed. ``"genres-title"``: the item's genres (as the prompt shows them next
            to every history and session item), ``": "``, then the title, so that the genres of a pick are
            written, in tokens the prompt shows for the recent items, before its title is (see
            :func:`item_completion`). The prompt text is the same for both.
    """

    max_history: int = 15
    max_session: int | None = field(default=None, metadata={"metavar": "N|none"})
    worked_example: bool = True
    session_window: str = field(default="sliding", metadata={"choices": SESSION_WINDOWS})
    completion: str = field(default="title", metadata={"choices": COMPLETION_STYLES})

    def __post_init__(self) -> None:
        if isinstance(self.max_history, bool) or not isinstance(self.max_history, (int, np.integer)) or self.max_history < 0:
            raise ValueError(f"`max_history` must be an integer >= 0, got {self.max_history!r}.")
        m = self.max_session
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 0):
            raise ValueError(f"`max_session` must be None or an integer >= 0, got {m!r}.")
        if not isinstance(self.worked_example, (bool, np.bool_)):
            raise ValueError(f"`worked_example` must be True or False, got {self.worked_example!r}.")
        if self.session_window not in SESSION_WINDOWS:
            raise ValueError(f"`session_window` must be one of {SESSION_WINDOWS}, got {self.session_window!r}.")
        if self.completion not in COMPLETION_STYLES:
            raise ValueError(f"`completion` must be one of {COMPLETION_STYLES}, got {self.completion!r}.")
        object.__setattr__(self, "max_history", int(self.max_history))
        object.__setattr__(self, "max_session", None if m is None else int(m))
        object.__setattr__(self, "worked_example", bool(self.worked_example))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form saved with rollouts, labels and adapters. ``session_window`` is written only when it is
        not ``"sliding"`` and ``completion`` only when it is not ``"title"``, so records of the default format read
        the same as those written before these options."""
        d = dataclasses.asdict(self)
        if d["session_window"] == "sliding":
            del d["session_window"]
        if d["completion"] == "title":
            del d["completion"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "PromptFormat":
        """Read :meth:`to_dict`'s form (missing keys take the defaults; ``None`` or ``{}``: the default format).

        Raises:
            ValueError: for a key that is not a field of the format (the message lists the fields).
        """
        d = dict(d or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown prompt option(s) {unknown}; a prompt format has {names}.")
        return cls(**d)

    @classmethod
    def coerce(cls, value: "PromptFormat | Mapping[str, Any] | None") -> "PromptFormat":
        """``value`` as a format: a :class:`PromptFormat` as is, a dict through :meth:`from_dict`, ``None`` the
        default format."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise TypeError(f"`prompt_format` must be a PromptFormat, a dict of its fields or None, got {type(value).__name__}.")

    def replace(self, **changes: Any) -> "PromptFormat":
        """A copy with some fields changed (validated like the constructor)."""
        return dataclasses.replace(self, **changes)


def build_messages(
    world: World,
    history_ids: Sequence[int] | np.ndarray,
    shown_ids: Sequence[int] | np.ndarray = (),
    shown_rewards: Sequence[float] | np.ndarray = (),
    prompt_format: PromptFormat | Mapping[str, Any] | None = None,
) -> list[dict[str, str]]:
    """The chat messages (system instruction, user turn) of one decision.

    Args:
        world: The world whose titles and genres are shown.
        history_ids: The user's past items, oldest first (``-1`` entries, the observation's padding, are dropped).
        shown_ids: Items recommended so far in this session, oldest first (``-1`` dropped).
        shown_rewards: The reward each of ``shown_ids`` earned (same length, padding aligned).
        prompt_format: How much history and session to show and how (:class:`PromptFormat`, or a dict of its
            fields; ``None``: the default format).

    Returns:
        ``[{"role": "system", ...}, {"role": "user", ...}]``.
    """
    fmt = PromptFormat.coerce(prompt_format)
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
    recent = history[-fmt.max_history:] if fmt.max_history else history[:0]
    lines.extend(format_item(world, i) for i in recent)
    if not recent.size:
        lines.append("(none)")
    m = fmt.max_session
    if m is None:
        first = 0
    elif fmt.session_window == "sliding" or m == 0:
        first = max(0, shown.size - m)
    else:
        first = m * ((shown.size - m) // m) if shown.size >= m else 0
    if shown.size:
        lines.append("Session:")
        for k in range(first, shown.size):
            lines.append(f"{k + 1}. {format_item(world, shown[k])}: continued, rating {rewards[k]:.1f}")
    lines.append("Next item?")
    instruction = INSTRUCTION if fmt.worked_example else COMPACT_INSTRUCTION
    return [{"role": "system", "content": instruction}, {"role": "user", "content": "\n".join(lines)}]


def build_prompt(
    world: World,
    history_ids: Sequence[int] | np.ndarray,
    shown_ids: Sequence[int] | np.ndarray = (),
    shown_rewards: Sequence[float] | np.ndarray = (),
    tokenizer: Any = None,
    prompt_format: PromptFormat | Mapping[str, Any] | None = None,
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
        prompt_format: See :func:`build_messages`.

    Returns:
        The prompt string; the completion (:func:`build_completion`) follows it directly.
    """
    messages = build_messages(world, history_ids, shown_ids, shown_rewards, prompt_format)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{messages[0]['content']}\n\n{messages[1]['content']}\nAnswer: "


def prompt_of_observation(world: World, obs: Mapping[str, Any], tokenizer: Any,
                          prompt_format: PromptFormat | Mapping[str, Any] | None = None) -> str:
    """The prompt of one session's observation (its ``history``, ``recommended`` and ``rewards``, ``-1`` padded):
    what the LLM recommender is shown there. Rollouts of policies without text (a teacher) write their prompts
    with it, in the format of the model they train."""
    return build_prompt(world, obs["history"], obs["recommended"], obs["rewards"], tokenizer=tokenizer,
                        prompt_format=prompt_format)


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


def item_completion(world: World, item: int, prompt_format: PromptFormat | Mapping[str, Any] | None = None) -> str:
    """The completion of recommending ``item`` in ``prompt_format`` (its :attr:`PromptFormat.completion`).

    ``"title"``: ``build_completion(title)``. ``"genres-title"``: ``build_completion("Genre/Genre: " + title)``,
    the genres written as :func:`format_item` writes them (an item without genres: its title alone).
    """
    fmt = PromptFormat.coerce(prompt_format)
    title = world.titles[int(item)]
    genres = world.genres[int(item)]
    if fmt.completion == "genres-title" and genres:
        return build_completion("/".join(genres) + GENRES_SEPARATOR + title)
    return build_completion(title)


def parse_completion(completion: str, prompt_format: PromptFormat | Mapping[str, Any] | None = None) -> str:
    """The title part of a completion: the text before the first terminator, stripped; for a ``"genres-title"``
    format, the text after the first ``": "`` of that (all of it when there is none)."""
    text, at = _text_and_separator(completion)
    if PromptFormat.coerce(prompt_format).completion == "genres-title" and at >= 0:
        text = text[at + len(GENRES_SEPARATOR):]
    return text.strip()


def _text_and_separator(completion: str) -> tuple[str, int]:
    """A completion's text before its first terminator, and where :data:`GENRES_SEPARATOR` first occurs in that
    text (-1: nowhere): the one split that :func:`parse_completion` and :func:`genres_part` read."""
    text = completion.split(COMPLETION_TERMINATOR, 1)[0]
    return text, text.find(GENRES_SEPARATOR)


def genres_part(completion: str) -> str:
    """The genres a ``"genres-title"`` completion writes, up to and including the colon of
    :data:`GENRES_SEPARATOR` (``"Sci-Fi/Drama: Moon Base\\n"`` -> ``"Sci-Fi/Drama:"``): the part of the choice that
    a boredom leave is about. A completion without the separator (an item without genres) is returned whole.
    For ``"genres-title"`` completions only: in a title completion, a title's own ``": "`` would be taken for it.

    Raises:
        ValueError: the completion is empty, or its genres part is (it starts with the separator).
    """
    if not isinstance(completion, str) or not completion:
        raise ValueError(f"`completion` must be a non-empty string, got {completion!r}.")
    text, at = _text_and_separator(completion)
    if at < 0:
        return completion
    genres = text[:at]
    if not genres.strip():
        raise ValueError(f"completion {completion!r} has no genres before {GENRES_SEPARATOR!r}.")
    return genres + GENRES_SEPARATOR.rstrip()


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
