"""The GCS test server (`storage_servers`): each patch mends a defect of the stock emulator.

Every check speaks the GCS JSON API over raw HTTP and states what real GCS does; it runs
against the patched emulator, and against one with every patch but its own (where it must fail:
the defect is real, and that patch is what mends it). Then
the server as the flows use it: two client processes at once, and a client killed mid-upload.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.parse

import pytest

import storage_servers
from storage_servers import object_url

BUCKET = 'b'


@pytest.fixture(scope='module')
def patched():
  with storage_servers.GcsServer(buckets=(BUCKET,)) as srv:
    yield srv


def _request(url, method='GET', body=b'', headers=None):
  """(status, headers, body); status None where the server dropped the connection."""
  parsed = urllib.parse.urlsplit(url)
  conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=20)
  try:
    conn.request(method, parsed.path + ('?' + parsed.query if parsed.query else ''), body=body,
                 headers=headers or {})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()
  except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
    return None, {}, b''
  finally:
    conn.close()


def _upload(url, name, data):
  status, _, body = _request(object_url(url, BUCKET, upload=True,
                                        query={'uploadType': 'media', 'name': name}),
                             'POST', data, {'Content-Type': 'application/octet-stream'})
  assert status == 200, (status, body)
  return json.loads(body)


def _download(url, name, **query):
  return _request(object_url(url, BUCKET, name, query={'alt': 'media', **query}))


def _listing(url, **query):
  status, _, body = _request(object_url(url, BUCKET, query=query))
  assert status == 200
  return [o['name'] for o in json.loads(body).get('items', [])]


def check_list_offsets(url):
  for name in ('lo/a', 'lo/b', 'lo/c', 'lp/d'):
    _upload(url, name, b'x')
  return _listing(url, prefix='l', startOffset='lo/b', endOffset='lp/') == ['lo/b', 'lo/c']


def check_generation_headers(url):
  generation = _upload(url, 'gen', b'payload')['generation']
  status, headers, body = _download(url, 'gen')
  headers = {k.lower(): v for k, v in headers.items()}
  if status != 200 or body != b'payload' or headers.get('x-goog-generation') != generation:
    return False
  not_modified = _download(url, 'gen', ifGenerationNotMatch=generation)[0]
  failed = _download(url, 'gen', ifGenerationMatch=str(int(generation) + 1))[0]
  return not_modified == 304 and failed == 412


def check_empty_media_upload(url):
  status, _, body = _request(object_url(url, BUCKET, upload=True,
                                        query={'uploadType': 'media', 'name': 'empty'}), 'POST')
  return status == 200 and json.loads(body)['size'] == '0' and _download(url, 'empty')[2] == b''


def check_multipart_bytes(url):
  data = b'line one\nends with CR\r'
  body = (b'--==0==\nContent-Type: application/json; charset=UTF-8\n\n'  # gcsfs's LF framing
          b'{"name": "multi"}\n--==0==\nContent-Type: application/octet-stream\n\n' + data +
          b'\n--==0==--')
  status, _, _ = _request(object_url(url, BUCKET, upload=True, query={'uploadType': 'multipart'}),
                          'POST', body, {'Content-Type': 'multipart/related; boundary="==0=="'})
  return status == 200 and _download(url, 'multi')[2] == data


def check_upload_preconditions(url):
  generation = _upload(url, 'pre', b'first')['generation']
  create_only = _request(object_url(url, BUCKET, upload=True, query={
      'uploadType': 'media', 'name': 'pre', 'ifGenerationMatch': '0'}), 'POST', b'second')[0]
  wrong_delete = _request(object_url(url, BUCKET, 'pre', query={
      'ifGenerationMatch': str(int(generation) + 1)}), 'DELETE')[0]
  return create_only == 412 and wrong_delete == 412 and _download(url, 'pre')[2] == b'first'


def check_chunked_body(url):
  framed = b'5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n'
  status, _, _ = _request(
      object_url(url, BUCKET, upload=True, query={'uploadType': 'media', 'name': 'chunked'}),
      'POST', framed, {'Transfer-Encoding': 'chunked', 'Content-Length': str(len(framed))})
  return status == 200 and _download(url, 'chunked')[2] == b'hello world'


def check_move_to(url):
  _upload(url, 'src', b'moved')
  status, _, _ = _request(object_url(url, BUCKET, 'src') + '/moveTo/o/' +
                          urllib.parse.quote('dst', safe=''), 'POST')
  return status == 200 and _download(url, 'dst')[2] == b'moved' and _download(url, 'src')[0] == 404


def check_truncated_body(url):
  parsed = urllib.parse.urlsplit(url)
  with socket.create_connection((parsed.hostname, parsed.port), timeout=20) as sock:
    sock.sendall(f'POST /upload/storage/v1/b/{BUCKET}/o?uploadType=media&name=cut HTTP/1.1\r\n'
                 f'Host: {parsed.netloc}\r\nContent-Length: 1000\r\n\r\n'.encode() + b'x' * 10)
    sock.shutdown(socket.SHUT_WR)  # The client is gone after 10 of 1000 bytes.
    sock.recv(65536)
  return _download(url, 'cut')[0] == 404


CHECKS = {name: globals()[f'check_{name}'] for name in storage_servers.PATCHES}


@pytest.mark.parametrize('name', list(CHECKS))
def test_patch_mends_its_defect(patched, name):
  assert CHECKS[name](patched.url), f'{name}: the patched server does not behave like GCS'
  others = [p for p in storage_servers.PATCHES if p != name]
  with storage_servers.GcsServer(buckets=(BUCKET,), patches=others) as without:
    assert not CHECKS[name](without.url), f'{name}: the defect is gone without the patch'


def test_every_patch_has_a_check():
  assert set(CHECKS) == set(storage_servers.PATCHES)


def test_parse_multipart_keeps_every_byte():
  for newline in (b'\r\n', b'\n'):
    data = b'\r\n\n\r'
    body = (b'--B' + newline + b'Content-Type: application/json' + newline * 2 + b'{}' +
            newline + b'--B' + newline + b'Content-Type: x/y' + newline * 2 + data + newline +
            b'--B--')
    parts = storage_servers.parse_multipart('multipart/related; boundary=B', body)
    assert parts == [({'content-type': 'application/json'}, b'{}'), ({'content-type': 'x/y'}, data)]


_CLIENT = textwrap.dedent('''
    import sys
    from vit_jax.checkpoint import paths
    root, n = sys.argv[1], int(sys.argv[2])
    for i in range(n):  # Some above gcsfs's 5 MiB single-request limit: resumable uploads.
      data = bytes([i % 256]) * ((6 << 20) if i % 4 == 0 else (1 << 16) + i)
      paths.write_bytes(f'{root}/{i}.bin', data)
      assert paths.read_bytes(f'{root}/{i}.bin') == data, i
    print('done', len(paths.listdir(root)))
''')


@pytest.mark.slow
def test_two_client_processes_at_once(gcs_server):
  env = dict(os.environ, **gcs_server.env)
  procs = [subprocess.Popen([sys.executable, '-c', _CLIENT, f'gs://test-bucket/client{i}', '12'],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  for proc in procs:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and out.strip().endswith('done 12'), out[-3000:]


_SLOW_UPLOADER = textwrap.dedent('''
    import socket, sys, time, urllib.parse
    url = urllib.parse.urlsplit(sys.argv[1])
    sock = socket.create_connection((url.hostname, url.port))
    sock.sendall(b'POST /upload/storage/v1/b/test-bucket/o?uploadType=media&name=killed HTTP/1.1'
                 b'\\r\\nContent-Length: 1000000\\r\\n\\r\\n' + b'x' * 5000)
    print('sent', flush=True)
    time.sleep(600)
''')


@pytest.mark.slow
def test_client_killed_mid_upload_leaves_no_object(gcs_server):
  from vit_jax.checkpoint import paths  # pylint: disable=g-import-not-at-top
  proc = subprocess.Popen([sys.executable, '-c', _SLOW_UPLOADER, gcs_server.url],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'sent'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  paths.write_bytes('gs://test-bucket/after', b'still serving')
  assert paths.read_bytes('gs://test-bucket/after') == b'still serving'
  assert not paths.exists('gs://test-bucket/killed')
