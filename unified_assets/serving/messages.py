"""Seeded generator of customer support messages, each labelled with its intents.

The intent classifier is trained on these, so the same seed always gives the same messages
and therefore the same model (its content hash decides whether a new version is needed).
A message may carry two intents ("where is my refund and why was my card declined?"). No
heavy imports: the standard library only."""

from __future__ import annotations

import random
from dataclasses import dataclass

INTENTS = ("refund_status", "decline_reason", "fraud_report", "other")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "refund_status": (
        "where is my refund", "I am still waiting for my refund from {merchant}",
        "when will I get my money back for the {merchant} order", "refund status please",
        "has my refund of {amount} been processed", "I returned an item {when} and got no refund",
        "how long does a refund take", "you promised a refund {when}, where is it",
        "my refund for order {order} has not arrived", "can you check the refund I asked for {when}",
        "still no refund on my card", "what happened to my refund of {amount}",
        "the shop says they refunded me {when} but I see nothing", "is my refund on its way",
    ),
    "decline_reason": (
        "why was my payment declined", "my card was declined at {merchant}",
        "payment of {amount} got rejected {when}", "why did my transaction fail",
        "the purchase at {merchant} was refused, why", "card declined for no reason",
        "why can't I pay at {merchant}", "my {channel} payment was blocked",
        "what is the reason my payment was declined {when}", "transaction denied at {merchant}",
        "why do you keep declining my card", "my payment of {amount} did not go through",
        "the terminal said declined {when}", "why was my {channel} purchase blocked",
    ),
    "fraud_report": (
        "I did not make this payment", "there is a charge of {amount} I don't recognise",
        "someone used my card at {merchant}", "I think my card was stolen",
        "report fraud on my account", "unauthorised transaction {when} at {merchant}",
        "my account has been hacked", "there are payments I never made",
        "I want to dispute a fraudulent charge of {amount}", "someone is using my card online",
        "a payment to {merchant} was not me", "I lost my card and see strange charges",
        "this {amount} charge is fraud", "please block my card, somebody else is using it",
    ),
    "other": (
        "how do I change my address", "what are your opening hours", "I want to close my account",
        "how do I increase my credit limit", "can I get a new PIN", "hello",
        "thanks for your help", "how do I update my phone number", "do you have a mobile app",
        "what is the interest rate on my card", "I need a statement for last month",
        "how do I add my card to my phone wallet", "can I speak to someone",
        "how do I change my email", "is there a fee for foreign currency",
    ),
}
# Two intents in one message, joined the way people write them.
PAIRS = (("refund_status", "decline_reason"), ("decline_reason", "fraud_report"),
         ("refund_status", "fraud_report"))
JOINERS = (" and ", ", also ", ". Also, ", " and also ", "; ")
PREFIXES = ("", "", "hi, ", "hello, ", "hey ", "good morning, ", "please help: ", "urgent: ")
SUFFIXES = ("", "?", ".", " thanks", " please", "!!", "? thank you")
SLOTS = {
    "merchant": ("the grocery store", "a petrol station", "an electronics shop", "amazon",
                 "a travel agency", "a gaming site", "the app store", "a fashion shop"),
    "amount": ("$12.99", "45 dollars", "$250", "120 EUR", "$1,200", "89.50", "$7"),
    "when": ("yesterday", "last week", "two weeks ago", "on Monday", "this morning", "today",
             "10 days ago"),
    "order": ("#48211", "A-1932", "123456", "#9001"),
    "channel": ("online", "in-store", "app", "web", "contactless"),
}


@dataclass(frozen=True)
class Message:
    text: str
    intents: tuple[str, ...]


def _fill(rng: random.Random, template: str) -> str:
    return template.format(**{slot: rng.choice(values) for slot, values in SLOTS.items()})


def _typo(rng: random.Random, text: str) -> str:
    """Swap two adjacent letters of one word: people type fast."""
    words = text.split(" ")
    long = [i for i, w in enumerate(words) if len(w) > 4]
    if not long:
        return text
    i = rng.choice(long)
    j = rng.randrange(len(words[i]) - 1)
    word = words[i]
    words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2:]
    return " ".join(words)


def _style(rng: random.Random, body: str) -> str:
    text = rng.choice(PREFIXES) + body + rng.choice(SUFFIXES)
    if rng.random() < 0.15:
        text = _typo(rng, text)
    if rng.random() < 0.2:
        text = text.lower()
    elif rng.random() < 0.1:
        text = text.upper()
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def generate_messages(per_intent: int = 400, pairs: int = 150, seed: int = 11) -> list[Message]:
    """`per_intent` single-intent messages per intent and `pairs` two-intent messages per pair,
    shuffled; the same arguments always give the same list."""
    rng = random.Random(seed)
    out = [Message(_style(rng, _fill(rng, rng.choice(TEMPLATES[intent]))), (intent,))
           for intent in INTENTS for _ in range(per_intent)]
    for first, second in PAIRS:
        for _ in range(pairs):
            a = _fill(rng, rng.choice(TEMPLATES[first]))
            b = _fill(rng, rng.choice(TEMPLATES[second]))
            if rng.random() < 0.5:
                a, b = b, a
            out.append(Message(_style(rng, a + rng.choice(JOINERS) + b), (first, second)))
    rng.shuffle(out)
    return out
