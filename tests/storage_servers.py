"""A real GCS JSON-API server on localhost for the tests: `gcp-storage-emulator`, patched.

The emulator (a Python GCS server from the package index) is what gcsfs, google-cloud-storage,
tensorstore (Orbax's array data) and etils.epath talk to in the tests. Stock, it has defects
that real GCS does not (`/work/shared/docs/storage.md` lists the measurements); each `PATCHES`
entry mends one, as tested code of ours (`tests/test_storage_servers.py` shows each defect on
the stock server and its absence here):

  list_offsets          objects.list honours startOffset/endOffset (tensorstore's list and
                        delete_range rely on them; stock, delete_range of `p/` empties the bucket)
  generation_headers    media downloads carry x-goog-generation/-metageneration and honour
                        ifGenerationMatch/ifGenerationNotMatch (tensorstore's conditional reads)
  empty_media_upload    a zero-byte `uploadType=media` upload stores an empty object (stock: a
                        TypeError, and clients retry forever)
  multipart_bytes       multipart uploads keep every byte (stock: the email parser drops a
                        trailing CR of the object when the client frames with LF, as gcsfs does)
  upload_preconditions  ifGenerationMatch on uploads and deletes is enforced (412)
  chunked_body          `Transfer-Encoding: chunked` wins over a Content-Length sent beside it
  move_to               objects.moveTo (stock: 501; gcsfs then retries ~30 s per rename)
  truncated_body        a request whose body ends before its Content-Length (a client killed
                        mid-upload) stores nothing, as on GCS (stock: the partial body is stored)

The server runs in its own process (`GcsServer`), in memory, with soft delete off on its
buckets (stock buckets keep every deleted object for 7 days, in memory). A separate process
survives a SIGKILL of any client, serves several client processes (it handles one request at a
time), and dies with the test process (it exits when its stdin closes).

Run it by hand: `python tests/storage_servers.py --bucket NAME [--port N]` prints `PORT <n>` and
serves until interrupted; point clients at it with the variables of `client_env`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.parse
from http import HTTPStatus
from typing import Callable, Mapping, Sequence

# Each client's own switch to the emulator (storage.md): gcsfs and google-cloud-storage read
# STORAGE_EMULATOR_HOST, tensorstore TENSORSTORE_GCS_HTTP_URL (and would read a credentials file
# named by GOOGLE_APPLICATION_CREDENTIALS without the test token); epath must leave `gs://` to
# gcsfs (with TensorFlow importable it takes tf.io.gfile, which cannot be redirected); gcsfs's
# experimental zonal-bucket class asks a gRPC control API the emulator does not serve. And the
# gcsfs that epath (so Orbax) makes would cache listings: a host would not see the steps another
# host wrote (tf.io.gfile, epath's client on a pod, caches none; checkpoint.paths asks for none).
FSSPEC_GCS = {'use_listings_cache': False}


def client_env(url: str) -> dict[str, str]:
  """The environment variables that point every GCS client of a process at `url`."""
  return {
      'STORAGE_EMULATOR_HOST': url,
      'TENSORSTORE_GCS_HTTP_URL': url,
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'dummy',
      'GOOGLE_CLOUD_PROJECT': 'vit-jax-test',
      'EPATH_USE_TF': 'false',
      'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
      'FSSPEC_GCS': json.dumps(FSSPEC_GCS),  # fsspec's defaults for every gcsfs it makes.
  }


# ---------------------------------------------------------------------------------------------
# The patches. Each takes the emulator's modules and replaces what it mends; `apply` runs them.


def _error(response, status: HTTPStatus, message: str) -> None:
  response.status = status
  response.json({'error': {'code': status.value, 'message': message,
                           'errors': [{'message': message, 'reason': status.phrase}]}})


def _query(request, name: str) -> str | None:
  values = request.query.get(name)
  return values[0] if values else None


def _generation(storage, bucket: str, name: str) -> str:
  """The live generation of an object, '0' where there is none (GCS's precondition value)."""
  obj = storage.objects.get(bucket, {}).get(name)
  return str(obj['generation']) if obj else '0'


def _failed_preconditions(request, storage, bucket: str, name: str) -> str | None:
  """Why `ifGenerationMatch`/`ifGenerationNotMatch` reject the request, or None."""
  current = _generation(storage, bucket, name)
  match, not_match = _query(request, 'ifGenerationMatch'), _query(request, 'ifGenerationNotMatch')
  if match is not None and match != current:
    return f'ifGenerationMatch={match}, but the generation is {current}'
  if not_match is not None and not_match == current:
    return f'ifGenerationNotMatch={not_match} matches the generation'
  return None


def _patch_list_offsets(server, objects) -> None:
  original = objects.ls

  def ls(request, response, storage, *args, **kwargs):
    original(request, response, storage, *args, **kwargs)
    start, end = _query(request, 'startOffset'), _query(request, 'endOffset')
    if response.status != HTTPStatus.OK or (start is None and end is None):
      return
    def kept(name):
      return (start is None or name >= start) and (end is None or name < end)
    listing = json.loads(response._content)  # pylint: disable=protected-access
    listing['items'] = [o for o in listing['items'] if kept(o['name'])]
    listing['prefixes'] = [p for p in listing['prefixes'] if kept(p)]
    response.json(listing)

  objects.ls = ls


def _patch_generation_headers(server, objects) -> None:
  original = objects.download

  def download(request, response, storage, *args, **kwargs):
    bucket, name = request.params['bucket_name'], request.params['object_id']
    obj = storage.objects.get(bucket, {}).get(name)
    if obj is not None:
      generation = str(obj['generation'])
      if _query(request, 'ifGenerationNotMatch') == generation:
        response.status = HTTPStatus.NOT_MODIFIED
        return
      match = _query(request, 'ifGenerationMatch')
      if match is not None and match != generation:
        return _error(response, HTTPStatus.PRECONDITION_FAILED,
                      f'ifGenerationMatch={match}, but the generation is {generation}')
    original(request, response, storage, *args, **kwargs)
    if obj is not None and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      response['x-goog-generation'] = str(obj['generation'])
      response['x-goog-metageneration'] = str(obj['metageneration'])
      response['x-goog-stored-content-length'] = str(obj['size'])

  objects.download = download  # `objects.get` calls it for `alt=media`.


def _patch_empty_media_upload(server, objects) -> None:
  original = objects.insert

  def insert(request, response, storage, *args, **kwargs):
    if _query(request, 'uploadType') == 'media' and request.data is None:
      request._data = b''  # pylint: disable=protected-access
    return original(request, response, storage, *args, **kwargs)

  objects.insert = insert


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
  """The (headers, bytes) parts of a `multipart/*` body, every byte of each part kept.

  The line break before each delimiter belongs to the delimiter (RFC 2046); clients frame with
  CRLF or, as gcsfs does, with LF alone: the break after the first delimiter tells which.
  """
  boundary = re.search(r'boundary="?([^";]+)"?', content_type)
  if not boundary:
    raise ValueError(f'No boundary in {content_type!r}')
  dash = b'--' + boundary.group(1).encode()
  start = body.index(dash) + len(dash)
  newline = b'\r\n' if body[start:start + 2] == b'\r\n' else b'\n'
  parts = []
  for chunk in body[start:].split(newline + dash)[:-1]:  # The last: the closing `--`.
    head, _, data = chunk[len(newline):].partition(newline * 2)
    headers = {}
    for line in head.decode('latin-1').split(newline.decode()):
      key, _, value = line.partition(':')
      headers[key.strip().lower()] = value.strip()
    parts.append((headers, data))
  return parts


def _patch_multipart_bytes(server, objects) -> None:
  original = server._read_data  # pylint: disable=protected-access

  def read_data(request_handler, query):
    content_type = request_handler.headers.get('Content-Type') or ''
    if not content_type.startswith('multipart/related'):
      return original(request_handler, query)
    raw = server._decode_raw_data(server._read_raw_data(request_handler),  # pylint: disable=protected-access
                                  request_handler)
    (_, meta), (headers, content) = parse_multipart(content_type, raw)[:2]
    return {'meta': json.loads(meta), 'content': content,
            'content-type': headers.get('content-type', 'application/octet-stream')}

  server._read_data = read_data  # pylint: disable=protected-access


def _patch_upload_preconditions(server, objects) -> None:
  insert, delete = objects.insert, objects.delete

  def checked(original, name_of):
    def handler(request, response, storage, *args, **kwargs):
      name = name_of(request)
      failed = name and _failed_preconditions(request, storage, request.params['bucket_name'],
                                              name)
      if failed:
        return _error(response, HTTPStatus.PRECONDITION_FAILED, failed)
      return original(request, response, storage, *args, **kwargs)
    return handler

  def upload_name(request):
    name = _query(request, 'name')
    if name is None and _query(request, 'uploadType') == 'multipart':
      name = request.data['meta'].get('name')
    if name is None and _query(request, 'uploadType') == 'resumable' and request.data:
      name = request.data.get('name')
    return name

  objects.insert = checked(insert, upload_name)
  objects.delete = checked(delete, lambda request: request.params['object_id'])


class TruncatedBody(ConnectionError):
  """A request body that ended before its Content-Length: the client is gone."""


def _read_chunked(rfile) -> bytes:
  data = bytearray()
  while True:
    size = int(rfile.readline().split(b';')[0].strip() or b'0', 16)
    if size == 0:
      while rfile.readline().strip():  # Trailers, up to the blank line.
        pass
      return bytes(data)
    data += rfile.read(size)
    rfile.readline()


def _patch_chunked_body(server, objects) -> None:
  original = server._read_raw_data  # pylint: disable=protected-access

  def read_raw_data(request_handler):
    if (request_handler.headers.get('Transfer-Encoding') or '').lower() == 'chunked':
      return _read_chunked(request_handler.rfile)  # RFC 9112: it overrides Content-Length.
    return original(request_handler)

  server._read_raw_data = read_raw_data  # pylint: disable=protected-access


def _patch_truncated_body(server, objects) -> None:
  original = server._read_raw_data  # pylint: disable=protected-access

  def read_raw_data(request_handler):
    data = original(request_handler)
    expected = request_handler.headers.get('Content-Length')
    chunked = (request_handler.headers.get('Transfer-Encoding') or '').lower() == 'chunked'
    if expected and not chunked and len(data or b'') < int(expected):
      # No response: the handler fails and the connection closes, as GCS drops the request.
      raise TruncatedBody(f'{len(data or b"")} of {expected} bytes received')
    return data

  server._read_raw_data = read_raw_data  # pylint: disable=protected-access


def _patch_move_to(server, objects) -> None:
  copy, delete = objects.copy, objects.delete

  def move(request, response, storage, *args, **kwargs):
    params = request.params
    request.params.update(dest_bucket_name=params['bucket_name'])
    copy(request, response, storage, *args, **kwargs)
    if response.status == HTTPStatus.OK:
      storage.delete_file(params['bucket_name'], params['object_id'])

  route = (r'^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/'
           r'(?P<dest_object_id>.*[^/]+)$', {'POST': move})
  server.HANDLERS = (route,) + server.HANDLERS


PATCHES: dict[str, Callable] = {
    'list_offsets': _patch_list_offsets,
    'generation_headers': _patch_generation_headers,
    'empty_media_upload': _patch_empty_media_upload,
    'multipart_bytes': _patch_multipart_bytes,
    'upload_preconditions': _patch_upload_preconditions,
    'chunked_body': _patch_chunked_body,
    'move_to': _patch_move_to,
    'truncated_body': _patch_truncated_body,
}


def apply(names: Sequence[str] = tuple(PATCHES)) -> None:
  """Patches the emulator of this process with `PATCHES[name]` for each of `names`."""
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  before = {name: getattr(objects, name) for name in ('ls', 'download', 'insert', 'delete')}
  for name in names:
    PATCHES[name](server, objects)
  # The route table holds the handler functions themselves: point it at the patched ones.
  replaced = {before[name]: getattr(objects, name) for name in before}
  server.HANDLERS = tuple((regex, {method: replaced.get(fn, fn) for method, fn in routes.items()})
                          for regex, routes in server.HANDLERS)


# ---------------------------------------------------------------------------------------------
# The server process.


def _serve(host: str, port: int, buckets: Sequence[str], patches: Sequence[str],
           watch_stdin: bool) -> None:
  import logging  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import buckets as bucket_handlers  # pylint: disable=g-import-not-at-top
  logging.disable(logging.WARNING)  # It logs every request, and a traceback per dropped one.
  apply(patches)
  # Clients open many connections at once (tensorstore); socketserver's backlog is 5.
  server.server.HTTPServer.request_queue_size = 128
  instance = server.create_server(host, port, in_memory=True)
  storage = instance._storage  # pylint: disable=protected-access
  for name in buckets:
    bucket_handlers.create_bucket(name, storage)
    storage.buckets[name]['softDeletePolicy'] = {'retentionDurationSeconds': '0'}
  instance.start()
  print(f'PORT {instance._api._httpd.server_address[1]}', flush=True)  # pylint: disable=protected-access
  if watch_stdin:
    sys.stdin.read()  # Until the test process closes the pipe (or dies).
  else:
    threading.Event().wait()  # Until interrupted.
  instance.stop()


class GcsServer:
  """A patched emulator in a child process, with one empty bucket per name in `buckets`.

  Attributes:
    url: `http://127.0.0.1:PORT`.
    env: `client_env(url)`: merge it into a client process's environment.
  """

  def __init__(self, buckets: Sequence[str] = ('test-bucket',),
               patches: Sequence[str] = tuple(PATCHES)):
    cmd = [sys.executable, os.path.abspath(__file__), '--watch-stdin',
           '--patches', ','.join(patches)]
    for name in buckets:
      cmd += ['--bucket', name]
    self._process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
    line = self._process.stdout.readline()
    if not line.startswith('PORT '):
      self._process.kill()
      raise RuntimeError(f'The GCS emulator did not start: {line}{self._process.stderr.read()}')
    # Drain stderr (tracebacks of dropped requests) so the child never blocks on a full pipe.
    threading.Thread(target=self._process.stderr.read, daemon=True).start()
    self.url = f'http://127.0.0.1:{int(line.split()[1])}'
    self.env = client_env(self.url)

  def pause(self) -> None:
    """Stops the server process (SIGSTOP): requests wait, unanswered, until `resume`; a client
    is then caught in the middle of whatever it was writing."""
    self._process.send_signal(signal.SIGSTOP)

  def resume(self) -> None:
    """Lets a paused server go on (SIGCONT)."""
    self._process.send_signal(signal.SIGCONT)

  def stop(self) -> None:
    if self._process.poll() is None:
      self.resume()
      self._process.stdin.close()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()

  def __enter__(self) -> 'GcsServer':
    return self

  def __exit__(self, *exc) -> None:
    self.stop()


def forget_clients() -> None:
  """Drops the GCS clients this process cached, so the next use reads the environment again.

  gcsfs instances (fsspec caches them by arguments) keep the endpoint they were made with, and
  epath caches both its gcsfs instance and whether it uses TensorFlow (EPATH_USE_TF): a new
  server on another port needs fresh ones.
  """
  if 'gcsfs' in sys.modules:
    sys.modules['gcsfs'].GCSFileSystem.clear_instance_cache()
  if 'etils.epath' in sys.modules:
    from etils.epath import backend, gpath  # pylint: disable=g-import-not-at-top
    backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
    gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access


def object_url(url: str, bucket: str, name: str = '', *, upload: bool = False,
               query: Mapping[str, str] | None = None) -> str:
  """The JSON-API URL of an object (or, with no name, of the bucket's object list)."""
  base = f'{url}/upload/storage/v1/b/{bucket}/o' if upload else f'{url}/storage/v1/b/{bucket}/o'
  if name and not upload:
    base += '/' + urllib.parse.quote(name, safe='')
  return base + ('?' + urllib.parse.urlencode(query) if query else '')


def _main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--host', default='127.0.0.1')
  parser.add_argument('--port', type=int, default=0)
  parser.add_argument('--bucket', action='append', default=[])
  parser.add_argument('--patches', default=','.join(PATCHES),
                      help='comma-separated names of PATCHES to apply (empty: stock server)')
  parser.add_argument('--watch-stdin', action='store_true',
                      help='exit when stdin closes (how GcsServer ties it to the test process)')
  args = parser.parse_args()
  _serve(args.host, args.port, args.bucket, [p for p in args.patches.split(',') if p],
         args.watch_stdin)


if __name__ == '__main__':
  _main()
