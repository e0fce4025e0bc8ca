"""Docker-style generated container names: ``adjective_scientist``."""

from __future__ import annotations

import secrets

ADJECTIVES = (
    "admiring", "bold", "brave", "calm", "clever", "cool", "eager", "elated", "fervent", "focused",
    "gallant", "gifted", "happy", "hopeful", "jolly", "keen", "kind", "loving", "lucid", "modest",
    "nifty", "optimistic", "peaceful", "quirky", "relaxed", "serene", "sharp", "stoic", "tender",
    "upbeat", "vibrant", "wizardly", "youthful", "zealous",
)
SCIENTISTS = (
    "agnesi", "babbage", "bohr", "curie", "darwin", "dijkstra", "einstein", "euler", "faraday",
    "fermi", "galileo", "gauss", "hopper", "hypatia", "kepler", "knuth", "lamarr", "lovelace",
    "maxwell", "meitner", "newton", "noether", "pascal", "ritchie", "shannon", "thompson", "torvalds",
    "turing", "wozniak", "yalow",
)


def generate() -> str:
    return f"{secrets.choice(ADJECTIVES)}_{secrets.choice(SCIENTISTS)}_{secrets.token_hex(2)}"
