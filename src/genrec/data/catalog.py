"""The simulated catalog: a category tree, brands, prices, titles, descriptions and optional images.

Words in titles and descriptions carry the category path and the brand, so that a text encoder can
recover the catalog's structure (the SID stage relies on that).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrec.data.schema import CATEGORY_SEP

# top category -> sub category -> leaf categories
TAXONOMY: dict[str, dict[str, list[str]]] = {
    "Beauty": {
        "Makeup": ["Lipstick", "Mascara", "Nail Polish"],
        "Skin Care": ["Moisturizer", "Cleanser", "Sunscreen"],
        "Hair Care": ["Shampoo", "Conditioner", "Hair Oil"],
    },
    "Electronics": {
        "Audio": ["Headphones", "Speaker", "Earbuds"],
        "Computers": ["Laptop", "Keyboard", "Mouse"],
        "Phone Accessories": ["Phone Case", "Charger", "Screen Protector"],
    },
    "Home": {
        "Kitchen": ["Frying Pan", "Knife Set", "Blender"],
        "Bedding": ["Pillow", "Duvet", "Bed Sheet"],
        "Decor": ["Vase", "Wall Clock", "Candle"],
    },
    "Sports": {
        "Fitness": ["Yoga Mat", "Dumbbell", "Resistance Band"],
        "Camping": ["Tent", "Backpack", "Water Bottle"],
        "Cycling": ["Bike Helmet", "Bike Light", "Cycling Gloves"],
    },
    "Fashion": {
        "Shoes": ["Sneakers", "Boots", "Sandals"],
        "Clothing": ["T-Shirt", "Jeans", "Jacket"],
        "Accessories": ["Watch", "Sunglasses", "Wallet"],
    },
    "Grocery": {
        "Coffee and Tea": ["Coffee Beans", "Green Tea", "Espresso Pods"],
        "Snacks": ["Chocolate", "Granola Bar", "Potato Chips"],
        "Pantry": ["Olive Oil", "Pasta", "Rice"],
    },
    "Toys": {
        "Building": ["Building Blocks", "Model Kit", "Magnetic Tiles"],
        "Games": ["Board Game", "Puzzle", "Card Game"],
        "Outdoor Play": ["Kite", "Water Blaster", "Scooter"],
    },
    "Books": {
        "Fiction": ["Mystery Novel", "Fantasy Novel", "Romance Novel"],
        "Non-fiction": ["Cookbook", "Biography", "Travel Guide"],
        "Children": ["Picture Book", "Activity Book", "Bedtime Stories"],
    },
}

# Words that describe items of a top category; they make descriptions category-specific.
TOP_WORDS = {
    "Beauty": ["gentle", "radiant", "long-lasting", "nourishing", "fragrance-free"],
    "Electronics": ["wireless", "fast-charging", "noise-cancelling", "bluetooth", "high-resolution"],
    "Home": ["durable", "cozy", "easy-clean", "stainless", "handcrafted"],
    "Sports": ["lightweight", "breathable", "ergonomic", "waterproof", "reinforced"],
    "Fashion": ["slim-fit", "classic", "leather", "stretch", "vintage"],
    "Grocery": ["organic", "roasted", "gluten-free", "fair-trade", "family-size"],
    "Toys": ["colorful", "educational", "ages 6+", "interactive", "safe"],
    "Books": ["bestselling", "illustrated", "paperback", "award-winning", "hardcover"],
}
BASE_PRICE = {"Beauty": 18, "Electronics": 70, "Home": 35, "Sports": 30, "Fashion": 45, "Grocery": 9, "Toys": 25, "Books": 14}
VARIANTS = ["", "", "Pro", "Mini", "Plus", "Set of 2", "Travel Size", "Deluxe"]
_SYLLABLES_A = ["Lu", "Ve", "Ra", "No", "Ki", "Zo", "Mi", "Ta", "Sol", "Bel", "Quo", "Fen"]
_SYLLABLES_B = ["ra", "vo", "xa", "line", "ora", "mis", "tex", "lum", "dia", "nova"]
BRANDS_PER_TOP = 6


@dataclass
class Leaf:
    top: str
    sub: str
    leaf: str
    top_idx: int
    sub_idx: int  # global index of the sub category

    @property
    def path(self) -> str:
        return CATEGORY_SEP.join([self.top, self.sub, self.leaf])


def leaves() -> list[Leaf]:
    """The leaf categories in a fixed order."""
    out, sub_global = [], 0
    for t, (top, subs) in enumerate(TAXONOMY.items()):
        for sub, leaf_names in subs.items():
            for leaf in leaf_names:
                out.append(Leaf(top, sub, leaf, t, sub_global))
            sub_global += 1
    return out


def brand_names(rng: np.random.Generator) -> dict[str, list[str]]:
    """Six made-up brand names per top category, unique across the catalog."""
    used: set[str] = set()
    out: dict[str, list[str]] = {}
    for top in TAXONOMY:
        names = []
        while len(names) < BRANDS_PER_TOP:
            name = rng.choice(_SYLLABLES_A) + rng.choice(_SYLLABLES_B)
            if name not in used:
                used.add(name)
                names.append(name)
        out[top] = names
    return out


def item_texts(rng: np.random.Generator, leaf: Leaf, brand: str) -> tuple[str, str]:
    """A title and a description whose words carry the category path and the brand."""
    words = TOP_WORDS[leaf.top]
    adj = rng.choice(words)
    variant = rng.choice(VARIANTS)
    title = " ".join(p for p in [brand, adj.capitalize(), leaf.leaf, variant] if p)
    second = rng.choice([w for w in words if w != adj])
    description = (
        f"{'An' if adj[0] in 'aeiou' else 'A'} {adj} {leaf.leaf.lower()} by {brand}, part of our {leaf.sub.lower()} collection in {leaf.top.lower()}. "
        f"{second.capitalize()} and made to last."
    )
    return title, description


_SHAPES = ("circle", "square", "triangle")


def draw_item_image(path: Path, leaf: Leaf, brand_idx: int, size: int, rng: np.random.Generator) -> None:
    """A small PNG: background hue by top category, shape by sub category, shade by leaf and brand."""
    from PIL import Image, ImageDraw

    hue_bg = (leaf.top_idx * 37) % 256
    bg = (hue_bg, 255 - hue_bg, (hue_bg * 3) % 256)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    leaf_in_sub = TAXONOMY[leaf.top][leaf.sub].index(leaf.leaf)
    fg = (
        (60 + 60 * leaf_in_sub + 10 * brand_idx) % 256,
        (200 - 50 * leaf_in_sub) % 256,
        (90 + 25 * brand_idx) % 256,
    )
    m = size // 6 + int(rng.integers(0, max(1, size // 10)))
    shape = _SHAPES[leaf.sub_idx % 3]
    box = (m, m, size - m, size - m)
    if shape == "circle":
        draw.ellipse(box, fill=fg)
    elif shape == "square":
        draw.rectangle(box, fill=fg)
    else:
        draw.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=fg)
    img.save(path, format="PNG")
