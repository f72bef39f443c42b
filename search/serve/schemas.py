"""Request and response models of the HTTP API, with this deployment's limits in the schema.

Validation happens here (pydantic); the routes (routes.py) see only well-formed values.  The
OpenAPI document at /openapi.json is generated from these classes.
"""

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from search.settings import Settings

Mode = Literal["semantic", "keyword", "hybrid"]
MAX_FILTER_FIELDS = 16
MAX_FILTER_VALUES = 256  # values per field (any-of)
MAX_FILTER_VALUE_CHARS = 512
MAX_FIELD_NAME_CHARS = 64
MAX_ITEM_ID_CHARS = 1024
NOT_BLANK = r"\S"  # a query has at least one non-space character


def _valid_unicode(text: str) -> str:
    """JSON may carry lone surrogates (\\ud800); they cannot be encoded, tokenised or stored."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("string_unicode", "String should be valid Unicode (no lone surrogates)") from None
    return text


FilterValue = Annotated[str, StringConstraints(max_length=MAX_FILTER_VALUE_CHARS), AfterValidator(_valid_unicode)]


def _as_list(value):
    return [value] if isinstance(value, str) else value


# "games" or ["games", "x11"] (any of); always a list after validation
_FilterList = Annotated[list[FilterValue], Field(max_length=MAX_FILTER_VALUES)]
FilterValues = Annotated[_FilterList, BeforeValidator(_as_list, json_schema_input_type=FilterValue | _FilterList)]
FieldName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_FIELD_NAME_CHARS), AfterValidator(_valid_unicode)
]


class Hit(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    score: float
    title: str
    fields: dict[str, Any]
    signals: list[str] | None = Field(None, description="what found it: semantic, keyword, exact")


class IndexRef(BaseModel):
    version: str
    count: int


class SearchResponse(BaseModel):
    query: str
    results: list[Hit]
    k: int
    offset: int
    mode: str | None = Field(None, description="the ranking that answered (hybrid may fall back to semantic)")
    note: str | None = Field(None, description="why the mode fell back, when it did")
    index: IndexRef
    timing_ms: dict[str, float]


class BatchResponse(BaseModel):
    queries: list[str]
    results: list[list[Hit]] = Field(description="one result list per query, in the order given")
    k: int
    offset: int
    mode: str | None = None
    note: str | None = None
    index: IndexRef
    timing_ms: dict[str, float]


class SimilarResponse(BaseModel):
    id: str
    results: list[Hit]
    k: int
    offset: int
    index: IndexRef
    timing_ms: dict[str, float]


class Item(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    title: str
    text: str
    fields: dict[str, Any]


class ErrorDetail(BaseModel):
    loc: list[str | int]
    type: str


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] | None = None


class ErrorResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    error: ErrorInfo
    request_id: str | None


class Live(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    model_config = ConfigDict(extra="allow")
    ready: bool
    state: str


def error_responses(*statuses: int) -> dict:
    """OpenAPI ``responses=`` for these statuses, each in the one error shape."""
    return {s: {"model": ErrorResponse} for s in statuses}


def search_request_model(settings: Settings) -> type[BaseModel]:
    """The POST /search body, with this deployment's limits in the schema."""
    QueryText = Annotated[
        str,
        StringConstraints(min_length=1, max_length=settings.max_query_chars, pattern=NOT_BLANK),
        AfterValidator(_valid_unicode),
    ]

    class SearchRequest(BaseModel):
        # python-re: the blank check means what str.isspace() means, as in the encoder
        model_config = ConfigDict(
            extra="forbid",
            regex_engine="python-re",
            json_schema_extra={
                "oneOf": [{"required": ["query"]}, {"required": ["queries"]}],
                "examples": [
                    {"query": "space shooter with power-ups", "k": 5},
                    {"queries": ["chess engine", "racing game"], "k": 3, "filter": {"section": ["games"]}},
                ],
            },
        )
        # Not nullable: give one of the two keys, not a null (the schema's oneOf says the same).
        query: QueryText = Field(None, description="the text to search for (give this or `queries`)")  # type: ignore[assignment]
        queries: Annotated[list[QueryText], Field(min_length=1, max_length=settings.max_batch)] = Field(
            None,  # type: ignore[arg-type]
            description=f"up to {settings.max_batch} texts; one result list each",
        )
        k: int = Field(10, ge=1, le=settings.max_k, description="results per query")
        offset: int = Field(0, ge=0, le=settings.max_offset, description="skip this many results (paging)")
        min_score: float | None = Field(
            None, ge=-1.0, le=1.0, allow_inf_nan=False, description="drop results scoring below this"
        )
        filter: Annotated[dict[FieldName, FilterValues], Field(max_length=MAX_FILTER_FIELDS)] | None = Field(
            None, description="field -> value or list of values (any of); fields combine with AND"
        )
        mode: Mode | None = Field(None, description="semantic, keyword or hybrid ranking (default: the server's)")

        @field_validator("k", "offset", "min_score", mode="before")
        @classmethod
        def _not_boolean(cls, value):
            # JSON true/false would pass as 1/0 in pydantic's lax mode; the schema says number
            if isinstance(value, bool):
                raise PydanticCustomError("number_type", "Input should be a number, not true or false")
            return value

        @model_validator(mode="after")
        def _one_of(self):
            if (self.query is None) == (self.queries is None):
                raise PydanticCustomError("query_or_queries", "Give exactly one of `query` or `queries`")
            return self

    return SearchRequest
