# Type stubs for the `rocket` extension module (python/rocket_module.cc), for
# type checkers and editors. tests/python/test_rocket.py (class Stubs) checks
# them against the built module: every name, base class and parameter.
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from typing_extensions import Buffer as ReadableBuffer

# A handler answers with bytes-like data, or None for an empty response (or
# for one it made with the Response it was given).
Handler = Union[
    Callable[["Request"], Optional[ReadableBuffer]],
    Callable[["Request", "Response"], Optional[ReadableBuffer]],
]

def movers() -> List[Dict[str, Any]]:
    """Every data mover and whether it is usable here, as `rocket doctor` says."""

def checksum64(data: ReadableBuffer) -> int:
    """The checksum the built-in `checksum` op answers."""

class Error(Exception):
    """A Rocket status other than OK. `code` is its number, `code_name` its name."""

    code: int
    code_name: str

class Cancelled(Error): ...
class Unknown(Error): ...
class InvalidArgument(Error, ValueError): ...
class DeadlineExceeded(Error, TimeoutError): ...
class NotFound(Error, LookupError): ...
class AlreadyExists(Error): ...
class PermissionDenied(Error, PermissionError): ...
class ResourceExhausted(Error): ...
class FailedPrecondition(Error): ...
class Aborted(Error): ...
class OutOfRange(Error): ...
class Unimplemented(Error): ...
class Internal(Error): ...
class Unavailable(Error): ...
class DataLoss(Error): ...

class Buffer:
    """A block of the client pool to build a request in (zero copy); writable."""

    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __len__(self) -> int: ...

class Reply:
    """A response: a read-only view of the server pool (or, answered in place,
    of the request's block). The block goes back once the Reply and every view
    of it are gone."""

    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __len__(self) -> int: ...
    @property
    def service_time(self) -> float: ...
    @property
    def lent_millicpus(self) -> int: ...
    @property
    def lent_memory_bytes(self) -> int: ...
    def copy_into(self, dst: ReadableBuffer, mover: str = "auto", cache: str = "auto") -> None: ...

class Future:
    """The job of Client.call_async()."""

    def result(self, timeout: Optional[float] = None) -> Reply: ...
    def done(self) -> bool: ...
    @property
    def job_id(self) -> int: ...

class Client:
    """A frontend's session with a Rocket server; safe to share between threads.

    Pools start at client_pool_bytes / server_pool_bytes (0: the server's
    default, 32 MiB) and grow on demand up to max_client_pool_bytes /
    max_server_pool_bytes (0: the server's max_pool_bytes)."""

    def __init__(
        self,
        socket_path: str,
        *,
        tenant: str = "default",
        client_pool_bytes: int = 0,
        server_pool_bytes: int = 0,
        max_client_pool_bytes: int = 0,
        max_server_pool_bytes: int = 0,
        ring_entries: int = 0,
        connect_timeout: float = 30.0,
        allow_kernel_copy: bool = False,
        mover: str = "auto",
        huge_pages: bool = True,
    ) -> None: ...
    def call(
        self,
        op: str,
        request: ReadableBuffer = b"",
        *,
        mover: str = "auto",
        cache: str = "auto",
        timeout: Optional[float] = None,
        lend_millicpus: int = 0,
        lend_memory_bytes: int = 0,
    ) -> Reply: ...
    def call_into(
        self,
        op: str,
        request: ReadableBuffer,
        response: ReadableBuffer,
        *,
        mover: str = "auto",
        cache: str = "auto",
        timeout: Optional[float] = None,
        lend_millicpus: int = 0,
        lend_memory_bytes: int = 0,
    ) -> int: ...
    def call_async(
        self,
        op: str,
        request: ReadableBuffer,
        *,
        mover: str = "auto",
        cache: str = "auto",
        timeout: Optional[float] = None,
        lend_millicpus: int = 0,
        lend_memory_bytes: int = 0,
    ) -> Future: ...
    def submit(
        self,
        op: str,
        request: ReadableBuffer,
        *,
        mover: str = "auto",
        cache: str = "auto",
        lend_millicpus: int = 0,
        lend_memory_bytes: int = 0,
    ) -> int: ...
    def submit_batch(
        self, op: str, requests: Sequence[ReadableBuffer], *, mover: str = "auto", cache: str = "auto"
    ) -> List[int]: ...
    def query(self, job_id: int, timeout: Optional[float] = None) -> Reply: ...
    def alloc(self, nbytes: int) -> Buffer: ...
    def stats(self) -> Dict[str, int]: ...
    @property
    def ops(self) -> List[str]: ...
    @property
    def session_id(self) -> int: ...
    @property
    def kernel_copy(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Client": ...
    def __exit__(self, *args: Any) -> None: ...

class Request:
    """What a handler is given; valid during the handler."""

    @property
    def data(self) -> memoryview: ...
    @property
    def op(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def uid(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def job_id(self) -> int: ...
    @property
    def session_id(self) -> int: ...
    @property
    def lent_millicpus(self) -> int: ...
    @property
    def lent_memory_bytes(self) -> int: ...
    def __len__(self) -> int: ...

class Response:
    """What a two-argument handler answers through; valid during the handler."""

    def alloc(self, nbytes: int) -> memoryview: ...
    def write(self, data: ReadableBuffer) -> None: ...
    def reply_in_place(self, offset: int, length: int) -> None: ...

class Server:
    """A backend: ops served to the clients that connect to socket_path."""

    def __init__(
        self,
        socket_path: str,
        *,
        dispatchers: int = 1,
        allowed_uids: List[int] = ...,
        allowed_gids: List[int] = ...,
        default_client_pool_bytes: int = 0,
        default_server_pool_bytes: int = 0,
        max_pool_bytes: int = 0,
        max_sessions: int = 0,
        max_sessions_per_uid: int = 0,
        max_mapped_bytes: int = 0,
        huge_pages: bool = True,
        handshake_timeout: float = 2.0,
        lend: bool = False,
        lend_cgroup: str = "",
        lend_journal: str = "",
        lend_factors: Dict[str, float] = ...,
        lend_default_factor: float = 1.0,
        lend_memory: bool = False,
        lend_memory_cgroup: str = "",
        lend_memory_reserve_bytes: int = 67108864,
    ) -> None: ...
    def handle(self, op: str, handler: Handler, *, concurrent: bool = False) -> None: ...
    def on_session_end(self, hook: Callable[[int], None]) -> None: ...
    def add_builtin_ops(self) -> None: ...
    def start(self) -> None: ...
    def run(self) -> None: ...
    def stop(self) -> None: ...
    def wait(self) -> None: ...
    def stats(self) -> Dict[str, int]: ...
    def __enter__(self) -> "Server": ...
    def __exit__(self, *args: Any) -> None: ...
