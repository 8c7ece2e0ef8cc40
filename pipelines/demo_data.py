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
# Hard set: the informal or formal form a person also goes by (Splink has no nickname table, so these
# records must match on the other fields).
NICKNAMES = {
    "Bob": "Robert",
    "Will": "William",
    "Sam": "Samantha",
    "James": "Jim",
    "David": "Dave",
    "Liam": "William",
    "Emma": "Em",
    "Sofia": "Sophie",
    "Zoe": "Zoey",
    "Ethan": "Eth",
    "Lucas": "Luke",
    "Grace": "Gracie",
    "Kara": "Karen",
    "Pablo": "Pablito",
}
# Hard set: junk values that real feeds carry. The blocklisted ones must never link anybody; the
# front-desk phone is not on any blocklist and must be caught by the identifier degree guard.
JUNK_EMAILS = ["test@test.com", "noreply@example.com", "none"]
JUNK_PHONES = ["000-000-0000", "0000000000"]
FRONT_DESK_PHONE = "(646) 200-0000"
HOUSEHOLD_EVERY = 40  # hard set: persons i, i+1 with i % 40 == 0 share a household
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


def _household(seed: int, h: int) -> dict:
    """What two persons of household ``h`` share: surname, address, a family email and a tablet."""
    rng = random.Random(seed * 7_919 + h * 104_729 + 17)
    last = rng.choice(LAST)
    country = "US" if rng.random() < 0.8 else "GB"
    city, postal = rng.choice(CITIES[country])
    return {
        "last": last,
        "country": country,
        "city": city,
        "postal": postal,
        "street": f"{rng.randint(1, 999)} {rng.choice(LAST)} {'Street' if country == 'US' else 'Road'}",
        "email": f"{last.lower()}.family{h}@{rng.choice(DOMAINS)}",
        "tablet": str(uuid.UUID(int=rng.getrandbits(128))),
        "first_names": rng.sample(FIRST, 2),  # two people, two names: same-name namesakes are another case
    }


def _hard_record(
    rng: random.Random,
    i: int,
    first: str,
    last: str,
    fn: str,
    email: str,
    phone: str,
    ids: set[str],
    other_record: bool,
) -> tuple[str, str, str, str]:
    """The hard set's changes to one customer record: (email, phone, first name, last name).

    Only a person with another customer record gets a record whose only contact value is an old email:
    names and addresses then tie the two together. With no other record nothing could.
    """
    ln = _typo(rng, last) if rng.random() < 0.04 else last
    if first in NICKNAMES and rng.random() < 0.3:
        fn = NICKNAMES[first]
    if rng.random() < 0.03:
        fn, ln = ln, fn
    r = rng.random()
    if r < 0.06 and other_record:
        # An old address: the record's only contact value, seen nowhere else. The person index keeps it
        # unique: with ``i % 97`` (before) two people of the same name collided, about 5,300 times at
        # 1,000,000 people, which glued strangers into one profile and made precision fall with size.
        email, phone = f"{first.lower()}{last.lower()}.{i}@oldmail.example.net", ""
        ids.add(f"email:{email}")
    elif r < 0.09:
        email = rng.choice(JUNK_EMAILS)
    elif r < 0.11:
        phone = rng.choice(JUNK_PHONES)
    elif r < 0.14:
        phone = FRONT_DESK_PHONE  # the clerk typed the store's number
    return email, phone, fn, ln


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
    household = person.get("household")
    for d in range(devices + (1 if household else 0)):
        shared = household is not None and d == devices  # the family tablet: both members log in on it
        anon = (
            household["tablet"]
            if household is not None and shared
            else str(uuid.UUID(int=rng.getrandbits(128)))
        )
        if not shared:
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
                        "email": household["email"] if household is not None and shared else person["email"],
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
                        elif d == 1 and not shared and person["hard"] and rng.random() < 0.5:
                            # A chain: cross-domain tracking aliases this device's id to the first
                            # device's, which is in turn aliased to the user id.
                            first_anon = person["anonymous_ids"][0]
                            calls.append(("alias", {"previousId": anon, "userId": first_anon}))
                            calls.append(("alias", {"previousId": first_anon, "userId": person["user_id"]}))
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
                    elif person["hard"] and kind in ("page", "track") and rng.random() < 0.02:
                        msg["userId"] = rng.choice(["undefined", "null"])  # a buggy SDK wrapper
                    msg.update(body)
                    if kind == "alias":
                        msg.pop("anonymousId")
                    yield msg


def generate(
    people: int,
    seed: int,
    out: str | Path,
    end: str = "2026-11-01T00:00:00Z",
    events_per_file: int = 50_000,
    hard: bool = False,
) -> Counts:
    """Write the demo data set for ``people`` persons under ``out`` and return what was written.

    ``hard`` adds the cases identity resolution is judged by: nicknames, swapped first/last names, surname
    typos, records whose only contact value is an old email seen nowhere else (probabilistic matching
    must link them), two-person households sharing a family email and a tablet (different user ids:
    must not merge), blocklisted junk values, a front-desk phone typed into many records, chains of
    aliases and SDK junk user ids. Values two people share are left out of ``ground_truth.csv`` (they
    belong to neither alone) and listed in ``ground_truth_shared.csv``.
    """
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
    if hard:
        paths["shared"] = out / "ground_truth_shared.csv"
    events = _EventWriter(out / "events", events_per_file)
    with (
        open(paths["crm"], "w", newline="") as f_crm,
        open(paths["shop"], "w", newline="") as f_shop,
        open(paths["orders"], "w", newline="") as f_orders,
        open(paths["truth"], "w", newline="") as f_truth,
        open(paths.get("shared", os.devnull), "w", newline="") as f_shared,
    ):
        shared_truth = csv.writer(f_shared)
        if hard:
            shared_truth.writerow(["identifier", "person_ids", "kind"])
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
            h = i // HOUSEHOLD_EVERY if i % HOUSEHOLD_EVERY < 2 and (i ^ 1) < people else None
            household = _household(seed, h) if hard and h is not None else None
            if household:
                last, country, city, postal, street = (
                    household[k] for k in ("last", "country", "city", "postal", "street")
                )
                first = household["first_names"][i % 2]
                email = f"{first.lower()}.{last.lower()}{i}@{rng.choice(DOMAINS)}"
                e164, local = _phone(i, country)
                if i % HOUSEHOLD_EVERY == 0:
                    for value in (f"email:{household['email']}", f"anonymous_id:{household['tablet']}"):
                        shared_truth.writerow([value, f"P{i:08d}|P{i + 1:08d}", "household"])
            dob = (datetime(1950, 1, 1) + timedelta(days=rng.randint(0, 20000))).strftime("%Y-%m-%d")
            person: dict = {
                "first": first,
                "last": last,
                "email": email,
                "user_id": f"u{seed}-{i:08d}" if rng.random() < 0.6 or household else None,
                "hard": hard,
                "household": household,
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
                    ln = last
                    if hard:
                        rec_email, rec_phone, fn, ln = _hard_record(
                            rng,
                            i,
                            first,
                            last,
                            fn,
                            rec_email,
                            rec_phone,
                            ids,
                            (has_crm and has_shop) or copies > 1,
                        )
                    upd = created + timedelta(days=rng.uniform(0, 190))
                    spelling = rng.choice(COUNTRY_SPELLINGS[country])
                    ids.add(f"{system}_id:{rid}")
                    if rec_email and rec_email.strip().lower() == email:
                        ids.add(f"email:{email}")
                    if rec_phone and not rec_phone.startswith(("000", "(646) 200")):
                        ids.add(f"phone:{e164}")
                    if system == "crm":
                        crm.writerow(
                            [
                                rid,
                                fn,
                                ln,
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
                                ln,
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
                uid = msg.get("userId")
                if uid and uid == person["user_id"]:
                    ids.add(f"user_id:{uid}")
                elif uid and msg["type"] == "alias":  # a chain link: the first device's anonymous id
                    ids.add(f"anonymous_id:{uid}")
                if msg.get("anonymousId") and not (household and msg["anonymousId"] == household["tablet"]):
                    ids.add(f"anonymous_id:{msg['anonymousId']}")
                if msg.get("previousId"):
                    ids.add(f"anonymous_id:{msg['previousId']}")
                traits = msg.get("traits") or {}
                if traits.get("email") and not (household and traits["email"] == household["email"]):
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
