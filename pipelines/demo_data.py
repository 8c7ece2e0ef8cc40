"""Deterministic demo data: CRM + shop customers (CSV), orders (CSV), Segment clickstream (JSON lines)
and a ground-truth file mapping every identifier to the true person.

Plain Python, no Spark: it streams each person's rows straight to disk, so memory stays flat whatever
``people`` is. Each person draws from its own ``Random(seed, i)``, so the output is identical for a seed.
Event files are written under a temporary name and renamed into place, as a landing-folder writer must.
"""

from __future__ import annotations

import csv
import json
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

FIRST = [
    "Ann",
    "Bob",
    "Carla",
    "David",
    "Emma",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "James",
    "Kara",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
    "Umar",
    "Vera",
    "Will",
    "Xena",
    "Yusuf",
    "Zoe",
    "Chloe",
    "Ethan",
    "Sofia",
    "Lucas",
    "Amara",
    "Mateo",
    "Priya",
    "Kenji",
    "Leila",
]
LAST = [
    "Smith",
    "Jones",
    "Garcia",
    "Muller",
    "Rossi",
    "Dubois",
    "Kowalski",
    "Nguyen",
    "Khan",
    "Silva",
    "Brown",
    "Taylor",
    "Wilson",
    "Martin",
    "Lee",
    "Walker",
    "Hall",
    "Young",
    "King",
    "Wright",
    "Lopez",
    "Hill",
    "Scott",
    "Green",
    "Adams",
    "Baker",
    "Nelson",
    "Carter",
    "Mitchell",
    "Perez",
    "Roberts",
]
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "example.org", "mail.com", "proton.me"]
US_AREAS = ["212", "415", "312", "617", "206", "303", "512", "404", "305", "213", "718", "646"]
CITIES = {
    "US": [("New York", "100"), ("San Francisco", "941"), ("Chicago", "606"), ("Boston", "021")],
    "GB": [("London", "SW1A "), ("Manchester", "M1 "), ("Leeds", "LS1 "), ("Bristol", "BS1 ")],
}
COUNTRY_SPELLINGS = {
    "US": ["US", "US", "USA", "United States", "us"],
    "GB": ["GB", "GB", "UK", "United Kingdom"],
}
PAGES = ["/", "/products", "/products/shoes", "/products/bags", "/cart", "/checkout", "/blog", "/account"]
CATEGORIES = ["shoes", "bags", "hats", "jackets", "socks"]
AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
    "Mozilla/5.0 (Linux; Android 15)",
]

CRM_HEADER = [
    "customer_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "street",
    "city",
    "postal_code",
    "country",
    "date_of_birth",
    "created_at",
    "updated_at",
]
SHOP_HEADER = [
    "shop_customer_id",
    "web_user_id",
    "given_name",
    "family_name",
    "email_address",
    "phone_number",
    "address1",
    "town",
    "zip",
    "country_code",
    "signup_date",
    "last_modified",
]
ORDER_HEADER = ["order_id", "source_system", "customer_id", "order_date", "amount", "currency", "status"]


@dataclass
class Counts:
    people: int = 0
    crm_rows: int = 0
    shop_rows: int = 0
    order_rows: int = 0
    event_lines: int = 0
    bad_event_lines: int = 0
    duplicate_event_lines: int = 0
    truth_rows: int = 0
    files: list[str] = field(default_factory=list)


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _typo(rng: random.Random, name: str) -> str:
    if len(name) < 4:
        return name
    i = rng.randrange(1, len(name) - 2)
    return name[:i] + name[i + 1] + name[i] + name[i + 2 :]


def _dirty_email(rng: random.Random, email: str) -> str:
    r = rng.random()
    if r < 0.2:
        return email.upper()
    if r < 0.35:
        return f"  {email.capitalize()} "
    return email


def _phone(i: int, country: str) -> tuple[str, str]:
    """A valid, unique phone per person index: (E.164, local digits)."""
    k = (i * 7_368_787) % 7_000_000  # a bijection on [0, 7M): unique numbers that do not look sequential
    if country == "US":
        area = US_AREAS[(i // 7_000_000) % len(US_AREAS)]
        exchange = 200 + k // 10_000
        if exchange % 100 == 11 or exchange == 555:
            exchange += 1
        line = f"{k % 10_000:04d}"
        return f"+1{area}{exchange}{line}", f"{area}{exchange}{line}"
    digits = f"74{k:08d}"
    return f"+44{digits}", digits


def _format_phone(rng: random.Random, country: str, local: str) -> str:
    if country == "US":
        a, e, n = local[:3], local[3:6], local[6:]
        return rng.choice(
            [f"+1 {a} {e} {n}", f"({a}) {e}-{n}", f"{a}.{e}.{n}", f"{a}{e}{n}", f"1-{a}-{e}-{n}"]
        )
    return rng.choice(
        [f"+44 {local[:4]} {local[4:]}", f"0{local[:4]} {local[4:]}", f"0044 {local}", f"0{local}"]
    )


class _EventWriter:
    """JSON lines into rolling files; each file is written as .tmp and renamed in when complete."""

    def __init__(self, folder: Path, lines_per_file: int):
        self.folder, self.lines_per_file = folder, lines_per_file
        self.index, self.lines = 0, 0
        self.fh: TextIO | None = None
        self.tmp: Path | None = None
        self.finished: list[str] = []

    def write(self, line: str) -> None:
        if self.fh is None:
            self.tmp = self.folder / f".events-{self.index:05d}.jsonl.tmp"
            fh: TextIO = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 - stays open across write() calls, closed in close()
            self.fh = fh
        else:
            fh = self.fh
        fh.write(line + "\n")
        self.lines += 1
        if self.lines >= self.lines_per_file:
            self.close()

    def close(self) -> None:
        if self.fh is not None and self.tmp is not None:
            self.fh.close()
            final = self.folder / f"events-{self.index:05d}.jsonl"
            os.replace(self.tmp, final)
            self.finished.append(str(final))
            self.fh, self.lines, self.index = None, 0, self.index + 1


def _person_events(rng: random.Random, pid: int, person: dict, end: datetime) -> Iterator[dict]:
    """Sessions on 1-3 devices: anonymous browsing first, identify (login or newsletter) later."""
    identifies = bool(person["user_id"] or person["newsletter"])
    # A second or third device is only linkable through a login (identify), as in real life, so people who
    # never identify browse on one device: the ground truth then holds only what a CDP could know.
    devices = 1 if not identifies or rng.random() < 0.8 else (2 if rng.random() < 0.85 else 3)
    for d in range(devices):
        anon = str(uuid.UUID(int=rng.getrandbits(128)))
        person["anonymous_ids"].append(anon)
        skew = timedelta(seconds=rng.choice([0, 0, 0, rng.randint(-3600, 3600)]))  # wrong device clocks
        agent, ip = rng.choice(AGENTS), f"203.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        t = end - timedelta(
            days=rng.uniform(12, 180)
        )  # 3 sessions at most 72 h apart always end before `end`
        sessions = rng.randint(1, 3)
        identify_at = rng.randint(0, sessions - 1) if identifies else -1
        identified = False
        for s in range(sessions):
            t += timedelta(hours=rng.uniform(1, 72))
            for e in range(rng.randint(1, 4)):
                t += timedelta(seconds=rng.randint(5, 300))
                calls: list[tuple[str, dict]] = []
                if s == identify_at and e == 0 and not identified:
                    traits = {
                        "email": person["email"],
                        "firstName": person["first"],
                        "lastName": person["last"],
                    }
                    if (
                        rng.random() < 0.6
                    ):  # checkout/sign-up forms send a phone, with its country code for GB
                        traits["phone"] = person["web_phone"]
                    if person["user_id"]:
                        if d == 0 and rng.random() < 0.3:
                            calls.append(("alias", {"previousId": anon, "userId": person["user_id"]}))
                        calls.append(("identify", {"userId": person["user_id"], "traits": traits}))
                    else:
                        calls.append(("identify", {"traits": {"email": person["email"]}}))
                    identified = True
                page = rng.choice(PAGES)
                calls.append(
                    (
                        "page",
                        {
                            "name": page,
                            "properties": {"path": page, "url": f"https://shop.example.com{page}"},
                        },
                    )
                )
                if page.startswith("/products") and rng.random() < 0.5:
                    calls.append(
                        (
                            "track",
                            {
                                "event": "Product Viewed",
                                "properties": {
                                    "category": rng.choice(CATEGORIES),
                                    "price": round(rng.uniform(5, 300), 2),
                                },
                            },
                        )
                    )
                for kind, body in calls:
                    send_delay = timedelta(milliseconds=rng.randint(10, 5000))
                    net = timedelta(milliseconds=rng.randint(20, 800))
                    msg = {
                        "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
                        "type": kind,
                        "anonymousId": anon,
                        "timestamp": _iso(t + skew),
                        "sentAt": _iso(t + send_delay + skew),
                        "receivedAt": _iso(t + send_delay + net),
                        "context": {
                            "ip": ip,
                            "userAgent": agent,
                            "library": {"name": "analytics.js", "version": "2.11.1"},
                        },
                    }
                    if identified and person["user_id"] and kind != "alias":
                        msg["userId"] = person["user_id"]
                    msg.update(body)
                    if kind == "alias":
                        msg.pop("anonymousId")
                    yield msg


def generate(
    people: int, seed: int, out: str | Path, end: str = "2026-11-01T00:00:00Z", events_per_file: int = 50_000
) -> Counts:
    """Write the demo data set for ``people`` persons under ``out`` and return what was written."""
    out = Path(out)
    for sub in ("customers/crm", "customers/shop", "orders", "events"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    end_ts = datetime.fromisoformat(end.replace("Z", "+00:00")).astimezone(UTC).replace(tzinfo=None)
    counts = Counts(people=people)
    paths = {
        "crm": out / "customers/crm/customers_crm.csv",
        "shop": out / "customers/shop/customers_shop.csv",
        "orders": out / "orders/orders.csv",
        "truth": out / "ground_truth.csv",
    }
    events = _EventWriter(out / "events", events_per_file)
    with (
        open(paths["crm"], "w", newline="") as f_crm,
        open(paths["shop"], "w", newline="") as f_shop,
        open(paths["orders"], "w", newline="") as f_orders,
        open(paths["truth"], "w", newline="") as f_truth,
    ):
        crm, shop, orders, truth = (csv.writer(f) for f in (f_crm, f_shop, f_orders, f_truth))
        crm.writerow(CRM_HEADER)
        shop.writerow(SHOP_HEADER)
        orders.writerow(ORDER_HEADER)
        truth.writerow(["identifier", "person_id"])
        for i in range(people):
            rng = random.Random(seed * 1_000_003 + i)
            pid = f"P{i:08d}"
            first, last = rng.choice(FIRST), rng.choice(LAST)
            country = "US" if rng.random() < 0.8 else "GB"
            email = f"{first.lower()}{rng.choice(['.', '_', ''])}{last.lower()}{i}@{rng.choice(DOMAINS)}"
            e164, local = _phone(i, country)
            city, postal = rng.choice(CITIES[country])
            street = f"{rng.randint(1, 999)} {rng.choice(LAST)} {'Street' if country == 'US' else 'Road'}"
            dob = (datetime(1950, 1, 1) + timedelta(days=rng.randint(0, 20000))).strftime("%Y-%m-%d")
            person: dict = {
                "first": first,
                "last": last,
                "email": email,
                "user_id": f"u{seed}-{i:08d}" if rng.random() < 0.6 else None,
                "newsletter": rng.random() < 0.5,
                "anonymous_ids": [],
                "e164": e164,
                "web_phone": _format_phone(rng, country, local)
                if country == "US"
                else f"+44 {local[:4]} {local[4:]}",
            }
            ids: set[str] = set()
            has_crm, has_shop = rng.random() < 0.6, rng.random() < 0.5
            created = end_ts - timedelta(days=rng.uniform(200, 1500))
            for system, present in (("crm", has_crm), ("shop", has_shop)):
                if not present:
                    continue
                copies = 2 if rng.random() < 0.03 else 1  # the same person twice in one system, new id
                for c in range(copies):
                    rid = f"{'C' if system == 'crm' else 'S'}{i:08d}{c}"
                    # Missing contact fields: 3% no email, 10% no phone, 0.2% neither. A record whose only
                    # contact value appears nowhere else cannot be linked by deterministic rules.
                    missing = rng.random()
                    rec_email = "" if missing < 0.03 else _dirty_email(rng, email)
                    rec_phone = "" if 0.03 <= missing < 0.13 else _format_phone(rng, country, local)
                    if missing > 0.998:
                        rec_email = rec_phone = ""
                    fn = _typo(rng, first) if rng.random() < 0.08 else first
                    fn = fn.upper() if rng.random() < 0.1 else fn
                    upd = created + timedelta(days=rng.uniform(0, 190))
                    spelling = rng.choice(COUNTRY_SPELLINGS[country])
                    ids.add(f"{system}_id:{rid}")
                    if rec_email:
                        ids.add(f"email:{email}")
                    if rec_phone:
                        ids.add(f"phone:{e164}")
                    if system == "crm":
                        crm.writerow(
                            [
                                rid,
                                fn,
                                last,
                                rec_email,
                                rec_phone,
                                street,
                                city,
                                f"{postal}{rng.randint(10, 99)}",
                                spelling,
                                dob if rng.random() < 0.9 else "",
                                _iso(created),
                                _iso(upd),
                            ]
                        )
                        counts.crm_rows += 1
                    else:
                        web_uid = person["user_id"] if person["user_id"] and rng.random() < 0.8 else ""
                        if web_uid:
                            ids.add(f"user_id:{web_uid}")
                        shop.writerow(
                            [
                                rid,
                                web_uid,
                                f" {fn} ",
                                last,
                                rec_email,
                                rec_phone,
                                street,
                                city,
                                f"{postal}{rng.randint(10, 99)}",
                                spelling,
                                created.strftime("%Y-%m-%d"),
                                upd.strftime("%Y-%m-%d %H:%M:%S"),
                            ]
                        )
                        counts.shop_rows += 1
                    for o in range(rng.choice([0, 0, 1, 1, 2, 3, 5]) if c == 0 else 0):
                        odate = created + timedelta(days=rng.uniform(0, 199))
                        amount = f"{rng.uniform(5, 400):.2f}" if rng.random() > 0.01 else "N/A"
                        row = [
                            f"{system[0].upper()}O{i:08d}{o:02d}",
                            system,
                            rid,
                            _iso(odate),
                            amount,
                            "USD" if country == "US" else "GBP",
                            rng.choice(["completed", "completed", "refunded"]),
                        ]
                        orders.writerow(row)
                        counts.order_rows += 1
                        if rng.random() < 0.02:  # re-sent export line: an exact duplicate
                            orders.writerow(row)
                            counts.order_rows += 1
            known = has_crm or has_shop or bool(person["user_id"])
            # Known customers who browse identify there (login, or newsletter sign-up with their email); some
            # only ever buy offline. Unknown visitors browse anonymously, and half of them leave an email.
            browses = rng.random() < 0.8 if (has_crm or has_shop) else True  # a web account implies visits
            person["newsletter"] = True if known else rng.random() < 0.5
            for msg in _person_events(rng, i, person, end_ts) if browses else ():
                line = json.dumps(msg, separators=(",", ":"))
                events.write(line)
                counts.event_lines += 1
                if msg.get("userId"):
                    ids.add(f"user_id:{msg['userId']}")
                if msg.get("anonymousId"):
                    ids.add(f"anonymous_id:{msg['anonymousId']}")
                if msg.get("previousId"):
                    ids.add(f"anonymous_id:{msg['previousId']}")
                traits = msg.get("traits") or {}
                if traits.get("email"):
                    ids.add(f"email:{traits['email']}")
                if traits.get("phone"):
                    ids.add(f"phone:{person['e164']}")
                if rng.random() < 0.02:  # at-least-once delivery: the same message again
                    events.write(line)
                    counts.event_lines += 1
                    counts.duplicate_event_lines += 1
            if rng.random() < 0.004:  # broken client: truncated JSON, or no identity at all
                bad = (
                    line[: len(line) // 2]
                    if rng.random() < 0.5
                    else json.dumps(
                        {
                            "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
                            "type": "track",
                            "event": "x",
                            "timestamp": _iso(end_ts),
                        }
                    )
                )
                events.write(bad)
                counts.event_lines += 1
                counts.bad_event_lines += 1
            for ident in sorted(ids):
                truth.writerow([ident, pid])
                counts.truth_rows += 1
    events.close()
    counts.files = [str(p) for p in paths.values()] + events.finished
    manifest = {k: v for k, v in counts.__dict__.items() if k != "files"} | {"seed": seed, "end": end}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return counts
