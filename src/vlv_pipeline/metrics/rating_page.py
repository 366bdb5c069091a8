"""The blind rating page of Table 2's human raters, and the reader of what they save.

``rating_page_html`` writes one self-contained HTML file: no network, no external script,
style or font; the images are embedded as data URLs. It shows one image at a time with its
captions in a seeded shuffled order, labelled A, B, C... (never the captioners' names), and
the rubric (``metrics/rubric.py``). The rater scores each caption from 0 to 6, moves between
images (previous, next, first unrated; the scores survive a reload in the browser's local
storage, keyed by the page's id) and saves: the page builds the file in the browser and hands
it over as a download (a ``Blob`` link), ``ratings-<page id>.json``::

    {"format": "vlv-rating/1", "page_id": "<16 hex>", "rater": "<name or empty>",
     "saved_at": "<ISO time>",
     "ratings": [{"image_id": "...", "order_key": "<16 hex>", "scores": [5, null, 6]}, ...]}

``scores[k]`` is the score of the k-th caption shown (null: not rated). The captioners behind
the letters are named nowhere in the page or the file: ``order_key`` is a seeded key
(``order_key``) from which ``caption_order`` recomputes the shuffle over the image's
captioners, known to the pipeline from the rating sample. The page is blind to the eye, not
sealed: someone who knows this code and the captioners could recompute the order.

``page_id`` hashes the rubric and, per image, its id, order key and the captions in the order
shown, so a file saved from another page (another sample, other captions, another rubric) is
refused by ``read_ratings`` instead of being read against the wrong captions.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from vlv_pipeline.errors import InputError, MissingInputError
from vlv_pipeline.metrics.rubric import (
    MAX_SCORE,
    MIN_SCORE,
    RUBRIC_INTRO,
    RUBRIC_LEVELS,
    rubric_hash,
)

FORMAT = "vlv-rating/1"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class PageItem:
    """One image of the page: its captions in the order shown, and (kept out of the page) the
    captioner of each."""

    image_id: str
    order_key: str
    captioners: tuple[str, ...]
    captions: tuple[str, ...]


def order_key(seed: int, image_id: str) -> str:
    """The key that fixes an image's caption order: 16 hex digits of sha256 over the seed and
    the image's id."""
    return hashlib.sha256(f"vlv-rating:{seed}:{image_id}".encode()).hexdigest()[:16]


def caption_order(key: str, captioners: Sequence[str]) -> list[str]:
    """The captioners in the order shown: their sorted names shuffled by ``random.Random``
    seeded with the key."""
    names = sorted(captioners)
    random.Random(int(key, 16)).shuffle(names)
    return names


def page_items(sample: pd.DataFrame, seed: int) -> list[PageItem]:
    """The page's images from the rating sample (rows image_id, captioner, caption; the
    images in the order of their first row). A missing caption (null) is left off the page."""
    items = []
    kept = sample[sample["caption"].notna()]
    for image_id in dict.fromkeys(sample["image_id"].astype(str)):
        rows = kept[kept["image_id"].astype(str) == image_id]
        captions = dict(
            zip(rows["captioner"].astype(str), rows["caption"].astype(str), strict=True)
        )
        key = order_key(seed, image_id)
        order = caption_order(key, list(captions))
        items.append(PageItem(image_id, key, tuple(order), tuple(captions[c] for c in order)))
    return items


def page_id(items: Sequence[PageItem]) -> str:
    """16 hex digits of sha256 over the rubric's hash and every image's id, order key and
    captions as shown."""
    content = [
        FORMAT,
        rubric_hash(),
        [[item.image_id, item.order_key, list(item.captions)] for item in items],
    ]
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode()).hexdigest()[:16]


def image_data_url(image: Image.Image | np.ndarray, image_format: str = "PNG") -> str:
    """An image (PIL, or an (H, W, 3) uint8 array) as a PNG or JPEG data URL."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    fmt = "JPEG" if image_format.upper() in ("JPEG", "JPG") else "PNG"
    image.convert("RGB").save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _script_json(value) -> str:
    """JSON safe inside a <script> element: no <, > or & appears literally."""
    text = json.dumps(value, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:1.5em auto;padding:0 1em;color:#222}
header{display:flex;gap:1em;align-items:center;flex-wrap:wrap}
#nav button,#save{font-size:1em;padding:.3em .9em}
#main{display:flex;gap:1.5em;align-items:flex-start;flex-wrap:wrap;margin-top:1em}
#image{width:min(384px,90vw);border:1px solid #ccc}
#image.pixelated{image-rendering:pixelated}
#captions{flex:1;min-width:300px}
.caption{border:1px solid #ddd;border-radius:6px;padding:.6em .8em;margin-bottom:.8em}
.caption.rated{border-color:#7a7}
.caption .text{margin:.2em 0 .5em 0;white-space:pre-wrap}
.scores label{margin-right:.7em;white-space:nowrap}
details{margin-top:1em}dt{font-weight:bold;margin-top:.4em}
#status{color:#555}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("page-data").textContent);
  var STORE = "vlv-rating:" + DATA.page_id;
  var scores = {};
  var index = 0;
  DATA.items.forEach(function (item) {
    scores[item.image_id] = item.captions.map(function () { return null; });
  });
  try {
    var kept = JSON.parse(window.localStorage.getItem(STORE) || "null");
    if (kept && kept.scores) {
      DATA.items.forEach(function (item) {
        var old = kept.scores[item.image_id];
        if (Array.isArray(old) && old.length === item.captions.length) {
          scores[item.image_id] = old;
        }
      });
      if (typeof kept.index === "number" && kept.index >= 0 && kept.index < DATA.items.length) {
        index = kept.index;
      }
    }
  } catch (e) { /* no local storage here: scores live until the page is closed */ }

  function persist() {
    try {
      window.localStorage.setItem(STORE, JSON.stringify({scores: scores, index: index}));
    } catch (e) { /* ignore */ }
  }
  function done(item) {
    return scores[item.image_id].every(function (s) { return s !== null; });
  }
  function countDone() {
    return DATA.items.filter(done).length;
  }
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }
  function render() {
    var item = DATA.items[index];
    var image = document.getElementById("image");
    image.src = item.image;
    image.alt = "image " + (index + 1);
    document.getElementById("position").textContent =
      "Image " + (index + 1) + " of " + DATA.items.length;
    document.getElementById("progress").textContent =
      countDone() + " of " + DATA.items.length + " images fully rated";
    document.getElementById("prev").disabled = index === 0;
    document.getElementById("next").disabled = index === DATA.items.length - 1;
    var box = document.getElementById("captions");
    box.textContent = "";
    item.captions.forEach(function (caption, slot) {
      var card = el("div", {"class": "caption", "data-slot": String(slot)});
      if (scores[item.image_id][slot] !== null) { card.classList.add("rated"); }
      card.appendChild(el("div", {"class": "letter"}, "Caption " + DATA.letters[slot]));
      card.appendChild(el("p", {"class": "text"}, caption));
      var row = el("div", {"class": "scores"});
      for (var v = DATA.min; v <= DATA.max; v++) {
        var id = "score-" + slot + "-" + v;
        var input = el("input", {type: "radio", name: "slot-" + slot, id: id, value: String(v)});
        if (scores[item.image_id][slot] === v) { input.checked = true; }
        input.addEventListener("change", (function (s, value) {
          return function () {
            scores[item.image_id][s] = value;
            persist();
            render();
          };
        })(slot, v));
        var label = el("label", {"for": id});
        label.appendChild(input);
        label.appendChild(document.createTextNode(" " + v));
        row.appendChild(label);
      }
      card.appendChild(row);
      box.appendChild(card);
    });
  }
  function go(to) {
    index = Math.max(0, Math.min(DATA.items.length - 1, to));
    persist();
    render();
  }
  function save() {
    var payload = {
      format: DATA.format,
      page_id: DATA.page_id,
      rater: document.getElementById("rater").value.trim(),
      saved_at: new Date().toISOString(),
      ratings: DATA.items.map(function (item) {
        return {image_id: item.image_id, order_key: item.order_key,
                scores: scores[item.image_id]};
      })
    };
    var blob = new Blob([JSON.stringify(payload, null, 1)], {type: "application/json"});
    var link = document.getElementById("download");
    if (link.href) { URL.revokeObjectURL(link.href); }
    link.href = URL.createObjectURL(blob);
    link.download = "ratings-" + DATA.page_id + ".json";
    link.click();
    document.getElementById("status").textContent =
      "Saved " + link.download + " (" + countDone() + " of " + DATA.items.length +
      " images fully rated).";
  }
  document.getElementById("prev").addEventListener("click", function () { go(index - 1); });
  document.getElementById("next").addEventListener("click", function () { go(index + 1); });
  document.getElementById("unrated").addEventListener("click", function () {
    var first = DATA.items.findIndex(function (item) { return !done(item); });
    if (first >= 0) { go(first); }
  });
  document.getElementById("save").addEventListener("click", save);
  document.addEventListener("keydown", function (event) {
    if (event.target && event.target.id === "rater") { return; }
    if (event.key === "ArrowRight") { go(index + 1); }
    if (event.key === "ArrowLeft") { go(index - 1); }
  });
  render();
})();
"""


def rating_page_html(
    items: Sequence[PageItem],
    images: Sequence[str],
    *,
    title: str = "Rate the captions",
    pixelated: bool = False,
) -> str:
    """The page (module docstring). ``images``: one data URL per item (``image_data_url``);
    ``pixelated``: draw the images' pixels as squares when enlarged (tiny images)."""
    if len(images) != len(items):
        raise ValueError(f"{len(images)} images for {len(items)} page items")
    if not items:
        raise ValueError("a rating page needs at least one image")
    identifier = page_id(items)
    data = {
        "format": FORMAT,
        "page_id": identifier,
        "min": MIN_SCORE,
        "max": MAX_SCORE,
        "letters": LETTERS,
        "items": [
            {
                "image_id": item.image_id,
                "order_key": item.order_key,
                "image": url,
                "captions": list(item.captions),
            }
            for item, url in zip(items, images, strict=True)
        ],
    }
    if max(len(item.captions) for item in items) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} captions per image")
    levels = "".join(
        f"<dt>{level} - {html.escape(name)}</dt><dd>{html.escape(meaning)}</dd>"
        for level, (name, meaning) in RUBRIC_LEVELS.items()
    )
    image_class = ' class="pixelated"' if pixelated else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>Page <code id="page-id">{identifier}</code>. The captions of each image come in a random
order, without the names of the models that wrote them. Score every caption from
{MIN_SCORE} to {MAX_SCORE} with the rubric below, then save your ratings and send the
file back.</p>
<details open><summary>Rubric</summary><p>{html.escape(RUBRIC_INTRO)}</p><dl>{levels}</dl></details>
<header>
<label>Your name (optional) <input id="rater" type="text" autocomplete="off"></label>
<span id="nav"><button id="prev" type="button">&larr; Previous</button>
<button id="next" type="button">Next &rarr;</button>
<button id="unrated" type="button">First unrated</button></span>
<span id="position"></span> &middot; <span id="progress"></span>
</header>
<div id="main">
<img id="image"{image_class} alt="">
<div id="captions"></div>
</div>
<p><button id="save" type="button">Save ratings</button> <span id="status"></span>
<a id="download" hidden></a></p>
<script type="application/json" id="page-data">{_script_json(data)}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""


# ---------------------------------------------------------------------- reading back


def read_ratings(
    path: str | Path, items: Sequence[PageItem], *, complete: bool = True
) -> pd.DataFrame:
    """A file saved from the rating page, checked against this run's page (``items``):
    one row per scored caption, columns image_id, captioner, score (int 0-6), rater (the
    file's ``rater``, else the file's name without its suffix).

    Refused with an error naming the file: not there, not JSON of the page's format, saved
    from another page (``page_id``), an image the page does not have or an order key that is
    not the image's, scores not one per caption shown, a score not a whole number from 0 to 6,
    an image twice, and (``complete``) any image of the page without a score for every caption.
    """
    path = Path(path)
    where = f"rating file {str(path)!r}"
    if not path.is_file():
        raise MissingInputError(
            f"{where} is not there: save the ratings from the rating page (its Save button "
            "downloads ratings-<page id>.json) and name that file in rating.ratings"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{where} is not a JSON file saved by the rating page: {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{where} is not a rating file of format {FORMAT!r} (format: {got!r})")
    expected = page_id(items)
    if data.get("page_id") != expected:
        raise InputError(
            f"{where} was saved from rating page {data.get('page_id')!r}, but this run's page "
            f"is {expected!r}: the sample, its captions or the rubric changed since. Rate "
            "this run's rating page (the latest rating_page.html) and save again"
        )
    ratings = data.get("ratings")
    if not isinstance(ratings, list):
        raise InputError(f"{where}: `ratings` is not a list")
    rater = data.get("rater")
    rater = rater.strip() if isinstance(rater, str) and rater.strip() else path.stem
    by_id = {item.image_id: item for item in items}
    seen: set[str] = set()
    rows = []
    unrated: list[str] = []
    for n, entry in enumerate(ratings):
        if not isinstance(entry, dict):
            raise InputError(f"{where}: ratings[{n}] is not an object")
        image_id = entry.get("image_id")
        item = by_id.get(image_id) if isinstance(image_id, str) else None
        if item is None:
            raise InputError(f"{where}: ratings[{n}] rates image {image_id!r}, not on this page")
        if image_id in seen:
            raise InputError(f"{where}: image {image_id!r} is rated twice")
        seen.add(image_id)
        if entry.get("order_key") != item.order_key:
            raise InputError(
                f"{where}: image {image_id!r} has order key {entry.get('order_key')!r}, but the "
                f"page showed its captions in order {item.order_key!r}"
            )
        scores = entry.get("scores")
        if not isinstance(scores, list) or len(scores) != len(item.captions):
            shown = len(item.captions)
            raise InputError(
                f"{where}: image {image_id!r} needs a list of {shown} scores (one per caption "
                f"shown), got {scores!r}"
            )
        for slot, score in enumerate(scores):
            if score is None:
                continue
            if (
                isinstance(score, bool)
                or not isinstance(score, int)
                or not (MIN_SCORE <= score <= MAX_SCORE)
            ):
                raise InputError(
                    f"{where}: image {image_id!r}, caption {LETTERS[slot]}: score {score!r} is "
                    f"not a whole number from {MIN_SCORE} to {MAX_SCORE}"
                )
            rows.append((image_id, item.captioners[slot], score, rater))
        if any(score is None for score in scores):
            unrated.append(image_id)
    unrated += [item.image_id for item in items if item.image_id not in seen]
    if complete and unrated:
        raise InputError(
            f"{where}: {len(unrated)} of the page's {len(items)} images are not fully rated "
            f"(e.g. {', '.join(repr(i) for i in unrated[:3])}); rate them and save again, or "
            "set rating.complete_ratings to false to count the ratings given"
        )
    if not rows:
        raise InputError(f"{where} holds no score")
    return pd.DataFrame(rows, columns=["image_id", "captioner", "score", "rater"])
