"""A protocol-faithful fake of two AWS APIs, served over real HTTP on 127.0.0.1 for real boto3 clients.

- EC2 Query API (form-encoded POST, XML in the 2016-11-15 namespace): DescribeSpotPriceHistory with
  InstanceType.N, ProductDescription.N, AvailabilityZone, Filter.N, StartTime/EndTime (the last change before
  StartTime is included, as AWS documents), MaxResults and NextToken paging. Each request is answered for the
  region in its SigV4 credential scope: only that region's zones.
- Pricing API (JSON 1.1, X-Amz-Target AWSPriceListService.GetProducts): TERM_MATCH filters on product
  attributes, PriceList as JSON strings, MaxResults/NextToken.
- Throttling switches: EC2 answers HTTP 503 RequestLimitExceeded, Pricing HTTP 400 ThrottlingException.

Every request is logged (service, action, region, params) so tests can count API calls.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"

LOCATIONS = {
    "us-east-1": "US East (N. Virginia)",
    "us-east-2": "US East (Ohio)",
    "us-west-2": "US West (Oregon)",
    "eu-central-1": "EU (Frankfurt)",
    "eu-west-1": "EU (Ireland)",
    "ap-northeast-1": "Asia Pacific (Tokyo)",
}


@dataclass(frozen=True)
class SpotChange:
    zone: str
    instance_type: str
    product: str
    price: float
    timestamp: float


@dataclass(frozen=True)
class Request:
    service: str  # "ec2" | "pricing"
    action: str
    region: str
    params: dict


def region_of_zone(zone: str) -> str:
    m = re.match(r"^([a-z]{2}(?:-[a-z]+)+-\d+)", zone)
    return m.group(1) if m else zone


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def parse_time(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


class FakeAws:
    """Start with ``with FakeAws() as aws:``; point boto3 at ``aws.url``."""

    def __init__(self, page_size: int = 1000) -> None:
        self.page_size = page_size  # server-side cap on rows per page (AWS: 1000)
        self.oldest_first = False  # AWS documents no order: clients must not rely on one
        self.spot: list[SpotChange] = []
        self.products: list[dict] = []
        self.requests: list[Request] = []
        self.throttle_ec2: bool | set[str] = False  # True, or the set of regions to throttle
        self.throttle_pricing = False
        self._tokens: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- data
    def add_spot(self, zone: str, instance_type: str, price: float, timestamp: float,
                 product: str = "Linux/UNIX") -> None:
        with self._lock:
            self.spot.append(SpotChange(zone, instance_type, product, price, timestamp))

    def add_on_demand(self, region: str, instance_type: str, usd: float, *, operating_system: str = "Linux",
                      tenancy: str = "Shared", pre_installed_sw: str = "NA", capacitystatus: str = "Used",
                      location: str | None = None) -> None:
        """One EC2 product with an OnDemand hourly term (and a Reserved term the parser must ignore)."""
        sku = secrets.token_hex(8).upper()
        attrs = {
            "servicecode": "AmazonEC2", "location": location or LOCATIONS.get(region, region),
            "locationType": "AWS Region", "regionCode": region, "instanceType": instance_type,
            "operatingSystem": operating_system, "tenancy": tenancy, "preInstalledSw": pre_installed_sw,
            "capacitystatus": capacitystatus, "licenseModel": "No License required",
            "usagetype": f"BoxUsage:{instance_type}", "operation": "RunInstances",
        }
        doc = {
            "product": {"productFamily": "Compute Instance", "attributes": attrs, "sku": sku},
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {f"{sku}.JRTCKXETXF": {
                    "priceDimensions": {f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                        "unit": "Hrs", "endRange": "Inf", "beginRange": "0",
                        "description": f"${usd} per On Demand Linux {instance_type} Instance Hour",
                        "rateCode": f"{sku}.JRTCKXETXF.6YS6EN2CT7", "appliesTo": [],
                        "pricePerUnit": {"USD": f"{usd:.10f}"}}},
                    "sku": sku, "effectiveDate": "2026-08-01T00:00:00Z", "offerTermCode": "JRTCKXETXF",
                    "termAttributes": {}}},
                "Reserved": {f"{sku}.4NA7Y494T4": {
                    "priceDimensions": {f"{sku}.4NA7Y494T4.6YS6EN2CT7": {
                        "unit": "Hrs", "pricePerUnit": {"USD": f"{usd * 0.6:.10f}"}}},
                    "termAttributes": {"LeaseContractLength": "1yr", "PurchaseOption": "No Upfront"}}},
            },
            "version": "20260801000000", "publicationDate": "2026-08-01T00:00:00Z",
        }
        with self._lock:
            self.products.append(doc)

    def count(self, service: str | None = None, action: str | None = None, region: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if (service is None or r.service == service)
                       and (action is None or r.action == action) and (region is None or r.region == region))

    # --- server
    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeAws:
        fake = self

        class Handler(_Handler):
            aws = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- EC2
    def _ec2(self, region: str, p: dict[str, str]) -> tuple[int, str]:
        action = p.get("Action", "")
        self._log(Request("ec2", action, region, p))
        if action != "DescribeSpotPriceHistory":
            return _ec2_error(400, "InvalidAction", f"The action {action} is not valid for this web service.")
        if self.throttle_ec2 is True or (isinstance(self.throttle_ec2, set) and region in self.throttle_ec2):
            return _ec2_error(503, "RequestLimitExceeded", "Request limit exceeded.")
        if p.get("AvailabilityZone") and p.get("AvailabilityZoneId"):
            return _ec2_error(400, "InvalidParameterCombination",
                              "AvailabilityZone and AvailabilityZoneId cannot both be specified")
        types = _indexed(p, "InstanceType") | _filter_values(p, "instance-type")
        products = _indexed(p, "ProductDescription") | _filter_values(p, "product-description")
        zones = ({p["AvailabilityZone"]} if p.get("AvailabilityZone") else set()) | _filter_values(
            p, "availability-zone")
        try:
            start = parse_time(p["StartTime"]) if "StartTime" in p else None
            end = parse_time(p["EndTime"]) if "EndTime" in p else None
            max_results = int(p.get("MaxResults", "1000"))
        except ValueError as e:
            return _ec2_error(400, "InvalidParameterValue", str(e))
        if not 1 <= max_results <= 1000:
            return _ec2_error(400, "InvalidParameterValue", "MaxResults must be between 1 and 1000")
        with self._lock:
            rows = [r for r in self.spot if region_of_zone(r.zone) == region
                    and (not types or r.instance_type in types) and (not products or r.product in products)
                    and (not zones or r.zone in zones)]
        rows = _spot_window(rows, start, end)
        rows.sort(key=lambda r: (-r.timestamp, r.zone, r.instance_type), reverse=self.oldest_first)
        query = json.dumps({k: v for k, v in sorted(p.items()) if k not in ("NextToken", "MaxResults")})
        offset, err = self._offset(p.get("NextToken"), query)
        if err:
            return _ec2_error(400, "InvalidNextToken", "The specified token is invalid.")
        n = min(max_results, self.page_size)
        page = rows[offset:offset + n]
        token = self._token(query, offset + n) if offset + n < len(rows) else ""
        items = "".join(
            f"<item><availabilityZone>{r.zone}</availabilityZone><instanceType>{r.instance_type}</instanceType>"
            f"<productDescription>{_xml(r.product)}</productDescription><spotPrice>{r.price:.6f}</spotPrice>"
            f"<timestamp>{iso(r.timestamp)}</timestamp></item>" for r in page)
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<DescribeSpotPriceHistoryResponse xmlns="{EC2_NS}">'
                f"<requestId>{secrets.token_hex(16)}</requestId><spotPriceHistorySet>{items}</spotPriceHistorySet>"
                f"<nextToken>{token}</nextToken></DescribeSpotPriceHistoryResponse>")
        return 200, body

    # --- Pricing
    def _pricing(self, region: str, target: str, body: dict) -> tuple[int, dict]:
        action = target.rsplit(".", 1)[-1]
        self._log(Request("pricing", action, region, body))
        if action != "GetProducts":
            return 400, {"__type": "UnknownOperationException", "message": f"unknown operation {action}"}
        if self.throttle_pricing:
            return 400, {"__type": "ThrottlingException", "Message": "Rate exceeded"}
        service = body.get("ServiceCode")
        filters = body.get("Filters", [])
        for f in filters:
            if f.get("Type") != "TERM_MATCH" or not f.get("Field"):
                return 400, {"__type": "InvalidParameterException", "Message": f"unsupported filter {f}"}
        max_results = int(body.get("MaxResults", 100))
        if not 1 <= max_results <= 100:
            return 400, {"__type": "InvalidParameterException", "Message": "MaxResults must be 1..100"}
        with self._lock:
            docs = [d for d in self.products if d["serviceCode"] == service and all(
                d["product"]["attributes"].get(f["Field"]) == f["Value"] for f in filters)]
        query = json.dumps({k: v for k, v in body.items() if k not in ("NextToken", "MaxResults")},
                           sort_keys=True)
        offset, err = self._offset(body.get("NextToken"), query)
        if err:
            return 400, {"__type": "InvalidNextTokenException", "Message": "bad token"}
        n = min(max_results, self.page_size)
        out: dict = {"FormatVersion": "aws_v1", "PriceList": [json.dumps(d) for d in docs[offset:offset + n]]}
        if offset + n < len(docs):
            out["NextToken"] = self._token(query, offset + n)
        return 200, out

    # --- helpers
    def _log(self, r: Request) -> None:
        with self._lock:
            self.requests.append(r)

    def _token(self, query: str, offset: int) -> str:
        t = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[t] = (query, offset)
        return t

    def _offset(self, token: str | None, query: str) -> tuple[int, bool]:
        if not token:
            return 0, False
        with self._lock:
            saved = self._tokens.get(token)
        if saved is None or saved[0] != query:
            return 0, True
        return saved[1], False


def _spot_window(rows: list[SpotChange], start: float | None, end: float | None) -> list[SpotChange]:
    """Rows in [start, end] plus, per (zone, type, product), the last change before start."""
    if end is not None:
        rows = [r for r in rows if r.timestamp <= end]
    if start is None:
        return list(rows)
    out = [r for r in rows if r.timestamp >= start]
    before: dict[tuple[str, str, str], SpotChange] = {}
    for r in rows:
        if r.timestamp < start:
            k = (r.zone, r.instance_type, r.product)
            if k not in before or r.timestamp > before[k].timestamp:
                before[k] = r
    return out + list(before.values())


def _indexed(p: dict[str, str], name: str) -> set[str]:
    return {v for k, v in p.items() if re.fullmatch(rf"{name}\.\d+", k)}


def _filter_values(p: dict[str, str], filter_name: str) -> set[str]:
    out: set[str] = set()
    for k, v in p.items():
        m = re.fullmatch(r"Filter\.(\d+)\.Name", k)
        if m and v == filter_name:
            out |= _indexed(p, f"Filter.{m.group(1)}.Value")
    return out


def _xml(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _ec2_error(status: int, code: str, message: str) -> tuple[int, str]:
    return status, (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
                    f"<Message>{_xml(message)}</Message></Error></Errors>"
                    f"<RequestID>{secrets.token_hex(16)}</RequestID></Response>")


class _Handler(BaseHTTPRequestHandler):
    aws: FakeAws
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        return None

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        auth = self.headers.get("Authorization", "")
        m = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request", auth)
        if not m:
            self._send(403, "application/xml", _ec2_error(403, "AuthFailure", "missing SigV4 signature")[1])
            return
        region = m.group(1)
        target = self.headers.get("X-Amz-Target")
        if target:
            status, doc = self.aws._pricing(region, target, json.loads(raw or b"{}"))
            self._send(status, "application/x-amz-json-1.1", json.dumps(doc))
            return
        params = {k: v[0] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
        status, body = self.aws._ec2(region, params)
        self._send(status, "text/xml;charset=UTF-8", body)

    def _send(self, status: int, ctype: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", secrets.token_hex(16))
        self.end_headers()
        self.wfile.write(data)


def client(service: str, region: str, url: str):
    """A real boto3 client for the fake: no retries, so a throttled call fails at once and tests stay quick."""
    import boto3
    from botocore.config import Config

    return boto3.client(service, region_name=region, endpoint_url=url, aws_access_key_id="testing",
                        aws_secret_access_key="testing",
                        config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5))
