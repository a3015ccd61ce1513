"""collab-engine: a Yjs-compatible collaborative document engine on pycrdt."""

from .engine import Engine as Engine
from .engine import EngineConfig as EngineConfig
from .errors import BadFrame as BadFrame
from .errors import CollabError as CollabError
from .errors import GoingAway as GoingAway
from .errors import InvalidDocumentName as InvalidDocumentName
from .errors import MessageTooBig as MessageTooBig
from .errors import PeerTooSlow as PeerTooSlow
from .errors import ProtocolError as ProtocolError
from .peer import Peer as Peer
from .room import Room as Room

__all__ = [
    "BadFrame",
    "CollabError",
    "Engine",
    "EngineConfig",
    "GoingAway",
    "InvalidDocumentName",
    "MessageTooBig",
    "Peer",
    "PeerTooSlow",
    "ProtocolError",
    "Room",
]
