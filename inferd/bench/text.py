"""Synthetic English text for benchmark prompts: word lists and a tiny sentence grammar.

Everything here is the project's own writing. The generator is deterministic given a
`random.Random`, cheap (no tokenizer needed), and varied enough that unrelated prompts do not
share long n-grams by accident, so prefix caching and n-gram speculation only help where a
workload means them to.
"""

from __future__ import annotations

import random

# Rough BPE tokens per generated word (common English words are one token with their leading
# space; punctuation adds a little). Used only when no tokenizer is available to size prompts.
TOKENS_PER_WORD = 1.26

NOUNS = """
lantern harbor ferry workshop ledger garden orchard kettle bridge tunnel meadow river engine
compass window staircase library archive bakery market courtyard chimney lighthouse quarry
glacier canyon village caravan satellite telescope notebook pencil hammer ladder bucket rope
anchor sail mast rudder cabin attic cellar pantry blanket curtain mirror candle clock calendar
letter parcel ticket platform station signal tower fountain statue museum theater orchestra
violin drum trumpet choir painter baker sailor farmer tailor carpenter mechanic librarian
gardener merchant courier shepherd fisherman traveler inspector engineer chemist surveyor
pilot stranger neighbor cousin committee council festival harvest storm thunder drizzle fog
frost sunrise twilight shadow pebble boulder feather acorn pumpkin turnip lemon walnut honey
biscuit noodle teapot saucer ribbon button thimble needle spindle loom wagon bicycle tractor
""".split()

ADJECTIVES = """
quiet crooked amber patient narrow sturdy restless gentle brittle hollow polished dusty
crimson silver wooden copper velvet frozen sunlit muddy windy humble clever careful eager
weary stubborn cheerful nervous curious ancient modern distant nearby enormous tiny heavy
light bitter sweet sour fragrant noisy silent bright dim tangled orderly ragged tidy
generous cautious reckless famous forgotten hidden obvious peculiar ordinary splendid plain
shallow steep gradual sudden loyal honest sleepy lively solemn playful golden emerald
""".split()

# (base, past, third person present)
VERBS = [
    ("carry", "carried", "carries"),
    ("mend", "mended", "mends"),
    ("paint", "painted", "paints"),
    ("follow", "followed", "follows"),
    ("measure", "measured", "measures"),
    ("polish", "polished", "polishes"),
    ("gather", "gathered", "gathers"),
    ("borrow", "borrowed", "borrows"),
    ("deliver", "delivered", "delivers"),
    ("inspect", "inspected", "inspects"),
    ("repair", "repaired", "repairs"),
    ("describe", "described", "describes"),
    ("discover", "discovered", "discovers"),
    ("arrange", "arranged", "arranges"),
    ("weigh", "weighed", "weighs"),
    ("sketch", "sketched", "sketches"),
    ("fold", "folded", "folds"),
    ("lift", "lifted", "lifts"),
    ("guard", "guarded", "guards"),
    ("count", "counted", "counts"),
    ("wash", "washed", "washes"),
    ("trade", "traded", "trades"),
    ("greet", "greeted", "greets"),
    ("watch", "watched", "watches"),
    ("study", "studied", "studies"),
    ("hide", "hid", "hides"),
    ("find", "found", "finds"),
    ("build", "built", "builds"),
    ("bring", "brought", "brings"),
    ("keep", "kept", "keeps"),
    ("sell", "sold", "sells"),
    ("write", "wrote", "writes"),
    ("steer", "steered", "steers"),
    ("climb", "climbed", "climbs"),
    ("open", "opened", "opens"),
    ("close", "closed", "closes"),
    ("light", "lit", "lights"),
    ("shake", "shook", "shakes"),
    ("hold", "held", "holds"),
    ("pack", "packed", "packs"),
    ("sort", "sorted", "sorts"),
    ("test", "tested", "tests"),
    ("record", "recorded", "records"),
    ("cover", "covered", "covers"),
    ("answer", "answered", "answers"),
    ("question", "questioned", "questions"),
    ("collect", "collected", "collects"),
    ("scatter", "scattered", "scatters"),
]

ADVERBS = """
slowly quickly carefully quietly gladly briskly patiently suddenly gently firmly boldly
silently cheerfully rarely often eagerly calmly loudly neatly roughly barely nearly warmly
politely proudly honestly secretly openly steadily lazily
""".split()

PREPOSITIONS = """
near behind beside under above across beyond toward through around inside outside past along
""".split()

TIME_PHRASES = [
    "every morning",
    "before dawn",
    "after the rain",
    "on the first Monday of each month",
    "during the long winter",
    "at the end of the season",
    "late in the evening",
    "whenever the bell rang",
    "once a year",
    "by the middle of spring",
    "just after lunch",
    "on quiet afternoons",
    "in the week before the fair",
    "at low tide",
    "before the doors opened",
]

NAMES = """
Ada Bruno Celia Dmitri Esme Farid Greta Hugo Imani Jonas Kiri Lucia Mateo Nadia Osric Priya
Quentin Rosa Soren Talia Umar Vera Wendell Xena Yusuf Zora
""".split()

TOPICS = [
    "keeping a small garden alive through a dry summer",
    "how tides follow the moon",
    "planning a three-day walking trip",
    "why bread dough needs time to rise",
    "organizing a shared workshop",
    "the way a bicycle stays upright",
    "writing a clear letter of complaint",
    "how lighthouses warned ships before radio",
    "choosing a first musical instrument",
    "saving money on a weekly food budget",
    "teaching a child to tie shoelaces",
    "how bees decide where to build a hive",
    "keeping notes during a long meeting",
    "repairing a dripping tap",
    "how maps were drawn before satellites",
    "why some wood floats better than other wood",
    "running a fair raffle at a village festival",
    "preparing a house for a cold winter",
    "learning the names of the stars",
    "packing a suitcase for a rainy week",
]

CHAT_SYSTEM_PROMPTS = [
    "You are a helpful assistant. Answer clearly and briefly.",
    "You are a patient tutor who explains things step by step.",
    "You are a friendly assistant for a small town library.",
    "You answer questions about everyday practical tasks in plain language.",
]

QUESTION_TEMPLATES = [
    "How would you explain {topic} to someone who has never thought about it?",
    "Give me three practical tips about {topic}.",
    "What is the difference between a {noun} and a {noun2}?",
    "Write a short note to {name} about {topic}.",
    "In two sentences, why does {topic} matter?",
    "What mistakes do people often make with {topic}?",
    "Describe a {adj} {noun} in one short paragraph.",
    "Can you suggest a name for a {adj} {noun} that belongs to {name}?",
]

FOLLOW_UP_TEMPLATES = [
    "Thanks. Could you make that shorter?",
    "Can you give one more example?",
    "What would {name} say about that?",
    "How does that change if the {noun} is {adj}?",
    "Please put the main point in a single sentence.",
]


def _sentence(rng: random.Random) -> str:
    """One sentence from a small grammar; variety comes from independent word choices."""
    n1, n2, n3 = rng.choice(NOUNS), rng.choice(NOUNS), rng.choice(NOUNS)
    a1, a2 = rng.choice(ADJECTIVES), rng.choice(ADJECTIVES)
    base, past, pres = rng.choice(VERBS)
    base2, past2, _ = rng.choice(VERBS)
    adv, prep, name = rng.choice(ADVERBS), rng.choice(PREPOSITIONS), rng.choice(NAMES)
    when = rng.choice(TIME_PHRASES)
    form = rng.randrange(10)
    if form == 0:
        s = f"the {a1} {n1} {past} the {n2} {prep} the {a2} {n3}."
    elif form == 1:
        s = f"when the {n1} {past}, the {a1} {n2} {past2} {adv}."
    elif form == 2:
        s = f"{when}, the {n1} {pres} a {a1} {n2}."
    elif form == 3:
        s = f"{name} {past} the {n1} and then {past2} the {a1} {n2}."
    elif form == 4:
        s = f"nobody expected the {n1} to {base} the {n2} so {adv}."
    elif form == 5:
        s = f"a {a1} {n1} stood {prep} the {n2}, and {name} {past} it {adv}."
    elif form == 6:
        s = f"if you {base} the {n1} {when}, the {n2} will stay {a1}."
    elif form == 7:
        s = f"{name} asked whether the {a1} {n1} could {base2} the {n2} {prep} the {n3}."
    elif form == 8:
        s = f"the {n1} was {a1}, but the {n2} {prep} it was {a2}."
    else:
        s = f"{when}, {name} {adv} {past} every {n1} in the {a1} {n2}."
    return s[0].upper() + s[1:]


def prose(rng: random.Random, approx_tokens: int, sentences_per_paragraph: int = 5) -> str:
    """Paragraphs of generated sentences totalling about `approx_tokens` tokens."""
    target_words = max(1, round(approx_tokens / TOKENS_PER_WORD))
    paragraphs: list[str] = []
    current: list[str] = []
    words = 0
    while words < target_words:
        s = _sentence(rng)
        current.append(s)
        words += len(s.split())
        if len(current) >= sentences_per_paragraph:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    text = "\n\n".join(paragraphs)
    # Trim the overshoot of the last sentence so short targets stay short.
    parts = text.split(" ")
    if len(parts) > target_words + 3:
        text = " ".join(parts[:target_words])
    return text


def item_list(rng: random.Random, approx_tokens: int) -> str:
    """A plain list, one short item per line (for copy-and-edit prompts)."""
    lines: list[str] = []
    tokens = 0.0
    while tokens < approx_tokens:
        line = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} for {rng.choice(NAMES)}"
        lines.append(line)
        tokens += len(line.split()) * 1.5 + 1
    return "\n".join(lines)


def chat_question(rng: random.Random) -> str:
    """A short, self-contained user question."""
    return _fill(rng, rng.choice(QUESTION_TEMPLATES))


def chat_follow_up(rng: random.Random) -> str:
    """A short follow-up turn that refers back to an earlier answer."""
    return _fill(rng, rng.choice(FOLLOW_UP_TEMPLATES))


def _fill(rng: random.Random, template: str) -> str:
    noun, noun2 = rng.sample(NOUNS, 2)
    return template.format(
        topic=rng.choice(TOPICS),
        noun=noun,
        noun2=noun2,
        name=rng.choice(NAMES),
        adj=rng.choice(ADJECTIVES),
    )
