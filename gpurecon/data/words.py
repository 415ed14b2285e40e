"""A built-in list of 100 Dutch words, in the spirit of the IFA corpus words the study used.

The synthetic dataset shows these words. Like the real list it holds numerals (``9``, ``12``)
and the clitic ``'s``, tokens that word-embedding models and tokenizers treat specially.
"""

WORDS: tuple[str, ...] = (
    "9", "12", "'s", "aan", "achter", "af", "al", "alles", "altijd", "andere",
    "avond", "bij", "binnen", "boek", "boom", "brood", "buiten", "dag", "dan", "deur",
    "dochter", "door", "drie", "eten", "fiets", "geld", "goed", "groot", "haar", "hand",
    "heel", "hier", "hond", "huis", "iets", "jaar", "jongen", "kat", "kind", "klein",
    "koffie", "kop", "laat", "land", "lang", "licht", "man", "meisje", "melk", "moeder",
    "morgen", "muziek", "naar", "nacht", "nee", "niet", "nieuw", "nooit", "ochtend", "oog",
    "oud", "over", "paard", "papier", "plaats", "raam", "rood", "school", "schoen", "snel",
    "soms", "spelen", "stad", "stoel", "straat", "tafel", "thuis", "tijd", "twee", "vader",
    "veel", "vis", "vogel", "vol", "vrouw", "vriend", "vuur", "want", "water", "week",
    "wereld", "werk", "wind", "winter", "woord", "zee", "zeker", "zon", "zomer", "zwart",
)
