"""Reading `/metrics` the way Prometheus does: with prometheus_client's parser."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Scrape:
    families: dict[str, str]  # family name -> type
    samples: dict[tuple[str, Labels], float]

    def value(self, sample: str, **labels: str) -> float:
        return self.samples.get((sample, frozenset(labels.items())), 0.0)

    def label_values(self, sample: str, label: str) -> set[str]:
        return {
            dict(labels)[label]
            for name, labels in self.samples
            if name == sample and label in dict(labels)
        }


def parse(text: str) -> Scrape:
    families: dict[str, str] = {}
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(families, samples)


async def scrape(client: httpx.AsyncClient) -> Scrape:
    response = await client.get("/metrics", headers={"x-api-key": ""})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)
