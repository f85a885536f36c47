"""Domains: the user's sending and tracking domains, their DNS records and checks."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, url_for
from flask_login import current_user, login_required

from ...extensions import db
from ...services.domains import (
    DomainError,
    DomainInput,
    add_domain,
    check_records,
    check_reverse,
    delete_domain,
    get_domain,
    publish,
    user_domains,
)
from .forms import AddDomainForm, DeleteDomainForm

bp = Blueprint("domains", __name__, url_prefix="/domains", template_folder="templates")


@bp.before_request
@login_required
def _require_login() -> None:
    pass


def _public_url() -> str:
    return current_app.config["PUBLIC_URL"]


def _own_domain(domain_id: int):
    domain = get_domain(current_user, domain_id)
    if domain is None:
        abort(404)
    return domain


@bp.get("/")
def index():
    return render_template("domains/index.html", domains=user_domains(current_user), form=AddDomainForm())


@bp.post("/")
def add():
    form = AddDomainForm()
    valid = form.validate_on_submit()
    secret = form.tsig_secret.data or ""
    form.tsig_secret.data = None  # never rendered back
    if not valid:
        return render_template("domains/index.html", domains=user_domains(current_user), form=form), 400
    try:
        domain = add_domain(current_user, DomainInput(
            name=form.name.data, kind=form.kind.data, zone=form.zone.data or "", dns_host=form.dns_host.data,
            dns_port=form.dns_port.data, tsig_name=form.tsig_name.data, tsig_algorithm=form.tsig_algorithm.data,
            tsig_secret=secret, dkim_selector=form.dkim_selector.data, dmarc_policy=form.dmarc_policy.data,
            dmarc_rua=form.dmarc_rua.data or "",
        ))
    except DomainError as exc:
        db.session.rollback()
        form.name.errors.append(str(exc))
        return render_template("domains/index.html", domains=user_domains(current_user), form=form), 400
    published = publish(domain, _public_url())
    db.session.commit()
    if published:
        flash(f"{domain.name} added and its DNS records published.", "success")
    else:
        flash(f"{domain.name} was added, but its records were not published: {domain.dns_error}", "error")
    return redirect(url_for("domains.view", domain_id=domain.id))


@bp.get("/<int:domain_id>")
def view(domain_id: int):
    domain = _own_domain(domain_id)
    return render_template(
        "domains/view.html", domain=domain, checks=check_records(domain, _public_url()),
        reverse=check_reverse(domain, current_app.config.get("DNS_RESOLVER", "")), delete_form=DeleteDomainForm(),
    )


@bp.post("/<int:domain_id>/publish")
def publish_now(domain_id: int):
    domain = _own_domain(domain_id)
    if publish(domain, _public_url()):
        flash("The DNS records were published.", "success")
    else:
        flash(f"The DNS records were not published: {domain.dns_error}", "error")
    db.session.commit()
    return redirect(url_for("domains.view", domain_id=domain.id))


@bp.post("/<int:domain_id>/delete")
def delete(domain_id: int):
    domain = _own_domain(domain_id)
    form = DeleteDomainForm()
    if not form.validate_on_submit():
        abort(400)
    name = domain.name
    try:
        delete_domain(current_user, domain, _public_url(), keep_records=form.keep_records.data)
    except DomainError as exc:
        db.session.rollback()
        flash(f"{name} was not deleted: {exc}. Fix that, or tick “leave the records” to delete it anyway.", "error")
        return redirect(url_for("domains.view", domain_id=domain_id))
    db.session.commit()
    flash(f"{name} deleted" + ("; its records were left on the DNS server." if form.keep_records.data
                               else " and its DNS records removed."), "success")
    return redirect(url_for("domains.index"))
