@echo off
rem deploy.bat - upload C modules to a cweb server with curl.exe (Windows 10+).
rem   deploy.bat hello.c [counter.c ...]     wildcards work too: deploy.bat example\*.c
rem Environment:
rem   CWEB_SERVER   server URL, default http://localhost:8080/mgnt (/mgnt is added if missing)
rem   CWEB_API_KEY  API key, sent as "Authorization: Bearer KEY"
rem   CWEB_CACERT   CA certificate for https with a self-signed certificate
setlocal

if "%~1"=="" (
    echo usage: deploy.bat FILE.c [FILE.c ...]
    echo   env: CWEB_SERVER [default http://localhost:8080/mgnt], CWEB_API_KEY, CWEB_CACERT
    exit /b 1
)

set "URL=%CWEB_SERVER%"
if not defined URL set "URL=http://localhost:8080/mgnt"
if "%URL:~-1%"=="/" set "URL=%URL:~0,-1%"
if not "%URL:~-5%"=="/mgnt" set "URL=%URL%/mgnt"

set "AUTH="
if defined CWEB_API_KEY set AUTH=-H "Authorization: Bearer %CWEB_API_KEY%"
set "TLS="
if defined CWEB_CACERT set TLS=--cacert "%CWEB_CACERT%"

set "FAILED=0"
for %%F in (%*) do call :deploy "%%~F"
if "%FAILED%"=="1" exit /b 1
exit /b 0

:deploy
echo deploying %~1 to %URL%
curl.exe -sS --fail-with-body %AUTH% %TLS% -F "code=@%~1" "%URL%"
if errorlevel 1 (
    set "FAILED=1"
    echo.
    echo deploy.bat: %~1 FAILED
    exit /b 1
)
echo.
exit /b 0
