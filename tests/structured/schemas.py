"""JSON schemas the structured-output tests generate against. A random-weight model writes
strings token by token from almost the whole vocabulary, and this one loves digits, so strings,
arrays and integers are bounded (maxLength, maxItems, minimum/maximum): without a bound a value
would outrun any max_tokens."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NAME = {"type": "string", "maxLength": 12}
INT = {"type": "integer", "minimum": -999, "maximum": 999}


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false, as strict mode has

    city: Literal["Paris", "Lima", "Oslo"]
    zip_code: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=130)
    address: Address
    tags: list[Literal["a", "b", "c"]] = Field(max_length=3)


SCHEMAS: dict[str, dict] = {
    "flat": {"type": "object", "properties": {"name": NAME, "age": INT,
                                              "ok": {"type": "boolean"}},
             "required": ["name", "age", "ok"], "additionalProperties": False},
    "nested": {"type": "object", "required": ["user"], "additionalProperties": False,
               "properties": {"user": {
                   "type": "object", "required": ["name", "address"], "additionalProperties": False,
                   "properties": {"name": NAME, "address": {
                       "type": "object", "required": ["city", "zip"], "additionalProperties": False,
                       "properties": {"city": {"enum": ["Paris", "Lima", "Oslo"]},
                                      "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}}}}},
    "array_of_objects": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
        "type": "object", "required": ["id", "score"], "additionalProperties": False,
        "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99},
                       "score": {"enum": [0.5, 1.5, 2.25]}}}},
    "enum": {"enum": ["red", "green", "blue", 7, None]},
    "any_of": {"type": "object", "required": ["v"], "additionalProperties": False,
               "properties": {"v": {"anyOf": [INT, NAME, {"type": "null"}]}}},
    "optional_fields": {"type": "object", "required": ["id"], "additionalProperties": False,
                        "properties": {"id": INT, "note": NAME,
                                       "flags": {"type": "array", "items": {"type": "boolean"},
                                                 "maxItems": 4}}},
    "refs": {"$defs": {"pt": {"type": "object", "required": ["x", "y"], "additionalProperties": False,
                              "properties": {"x": INT, "y": INT}}},
             "type": "object", "required": ["a", "b"], "additionalProperties": False,
             "properties": {"a": {"$ref": "#/$defs/pt"}, "b": {"$ref": "#/$defs/pt"}}},
    "const_and_bounds": {"type": "object", "required": ["kind", "n"], "additionalProperties": False,
                         "properties": {"kind": {"const": "point"},
                                        "n": {"type": "integer", "minimum": -5, "maximum": 5}}},
    "pydantic": Person.model_json_schema(),
}
