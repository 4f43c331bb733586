{
  "format": "backupctl-signature",
  "key": "ed25519:wiz3ZiLOGkeUpzDjqNioMYZw3hrINvX1a/0+Y+p3YEw=",
  "signature": "wgmIkD+dmUrJvQAjiyoz6Rc4ykV+nNeFPe2QraoAxLoTm6mQqFnH/cGLCmzHT9qu48sS6uPE4uFBQFU2HcVsAw==",
  "version": 1
}
